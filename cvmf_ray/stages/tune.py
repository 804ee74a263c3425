"""Tuning a method against the retrained model: the validation split, and what a trial measures of a model.

A trial unlearns the original with suggested values and is scored the way DeepUnlearn scores it (Cadet et al.
2024, `munl/hpsearch/objectives.py`), against the retrain of the same seed instead of against targets
(cvmf_ray/objective.py): retain, forget and validation accuracy, and a loss membership-inference attack (ROC AUC of
forget-train against validation losses). For a forgotten class the retrained model's AUC is far from 0.5 (it never
saw the class), so the attack is compared with the retrain's value, not with chance.

Tuning never reads the test set: it scores on a stratified validation split held out of the training set
(`holdout`), which the originals and retrains of a tuning grid never train on. Each split is read through a
bounded sample (`TuningSamples`), so a trial costs about its unlearning, not a full evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
from torch import nn

from cvmf_ray.datasets import ImageData
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.privacy import loss_auc, per_sample_loss
from cvmf_ray.schema import PROBED
from cvmf_ray.stages.evaluate import predict


@dataclasses.dataclass(frozen=True)
class Holdout:
    """The validation split: `fraction` of every class of the training set, drawn with `seed`."""

    fraction: float
    seed: int


def holdout(data: ImageData, split: Holdout) -> tuple[ImageData, tuple[torch.Tensor, torch.Tensor]]:
    """(the training set without the validation split, (validation images, labels)). Stratified, so every class
    keeps its share on both sides; the same split for every cell of a grid, whatever its seed."""
    validation = forget_mask(ForgetSpec("fraction", split.fraction), data.train_y, split.seed)
    kept = dataclasses.replace(data, train_x=data.train_x[~validation], train_y=data.train_y[~validation])
    return kept, (data.train_x[validation], data.train_y[validation])


@dataclasses.dataclass(frozen=True)
class TuningSamples:
    """At most `size` images of each split a trial is scored on: a seeded sample, the same for every trial of a
    (forget set, seed), so trials and the retrain are scored on the same images."""

    retain: tuple[torch.Tensor, torch.Tensor]
    forget: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def draw(cls, data: ImageData, validation, forget: ForgetSpec, seed: int, size: int) -> TuningSamples:
        mask = forget_mask(forget, data.train_y, seed)
        pick = functools.partial(_sample, size=size, seed=seed)
        return cls(pick(data.train_x[~mask], data.train_y[~mask]), pick(data.train_x[mask], data.train_y[mask]),
                   pick(*validation))  # fmt: skip


def _sample(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random `size` of (x, y), or all of it."""
    if len(y) <= size:
        return x, y
    index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
    return x[index], y[index]


def probe(model: nn.Module, samples: TuningSamples, mean, std, device: str = "cpu") -> dict[str, float]:
    """A model's accuracies on the three samples and its loss-MIA AUC (forget-train against validation)."""
    model.eval()
    values, losses = {}, {}
    for split in ("retain", "forget", "validation"):
        x, y = getattr(samples, split)
        logits = predict(model, x, mean, std, device).float()
        values[f"{split}_accuracy"] = float((logits.argmax(1) == y).double().mean())
        losses[split] = per_sample_loss(logits, y)
    finite = all(np.isfinite(v).all() for v in losses.values())
    values["mia"] = loss_auc(losses["forget"], losses["validation"]) if finite else math.nan
    return {name: values[name] for name in PROBED}
