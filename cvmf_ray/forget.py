"""Forget sets: which training samples an unlearning method must forget.

Two scenarios, both standard in the literature: a whole class (`class`, value = class index) or a random,
stratified fraction of the training set (`fraction`, value in (0, 1), drawn from the grid seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cvmf_ray.datasets import ImageData
from cvmf_ray.errors import CellError
from cvmf_ray.lazy import torch


@dataclass(frozen=True)
class ForgetSpec:
    kind: Literal["class", "fraction"]
    value: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    @property
    def forget_class(self) -> int | None:
        return int(self.value) if self.kind == "class" else None

    @property
    def forget_fraction(self) -> float | None:
        return float(self.value) if self.kind == "fraction" else None

    def __str__(self) -> str:
        return f"class {int(self.value)}" if self.kind == "class" else f"{self.value:.0%} random"


def forget_mask(spec: ForgetSpec, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Boolean mask over training samples: True = in the forget set."""
    if spec.kind == "class":
        return labels == int(spec.value)
    from sklearn.model_selection import train_test_split  # imported where used: ~1 s per process

    index = np.arange(len(labels))
    try:
        forget, _ = train_test_split(index, train_size=spec.value, stratify=labels.numpy(), random_state=seed)
    except ValueError as err:  # fewer forget (or retain) samples than classes: no stratified split exists
        raise CellError(f"cannot draw a stratified {spec} forget set from {len(labels)} samples: {err}") from None
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[torch.from_numpy(forget)] = True
    return mask


def retain_sample(train_forget: torch.Tensor, test_forget: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Mask of the training images a bounded evaluation infers: the whole forget set and `size` retain images (all
    of them when there are no more). They start with the SVC attack's members (`privacy.svc_efficacy`: the first
    as many retain images as retain-test images, in dataset order), so `mia_efficacy` is the full evaluation's;
    the rest is a random draw seeded by the cell's seed, so a model and the retrain of its seed are read on the
    same images and their gap is a paired difference."""
    retain = (~train_forget).nonzero().squeeze(1)
    first = int((~test_forget).sum())
    if len(retain) <= max(size, first):
        return torch.ones_like(train_forget)
    head, rest = retain[:first], retain[first:]
    drawn = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: max(size - first, 0)]]
    inferred = train_forget.clone()
    inferred[head] = True
    inferred[drawn] = True
    return inferred


def forget_masks(data: ImageData, spec: ForgetSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (train, test) of the forget set. Random-sample forgetting has no forget-class test
    images: its test mask is all False (`forget_test` metrics are null, `retain_test` is the whole test set)."""
    train_forget = forget_mask(spec, data.train_y, seed)
    if spec.kind == "class":
        return train_forget, data.test_y == int(spec.value)
    return train_forget, torch.zeros(len(data.test_y), dtype=torch.bool)


def split_data(data: ImageData, spec: ForgetSpec, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The five evaluation splits as uint8 images + labels (`forget_masks` applied to the images)."""
    train_forget, test_forget = forget_masks(data, spec, seed)
    return {
        "test": (data.test_x, data.test_y),
        "forget_test": (data.test_x[test_forget], data.test_y[test_forget]),
        "retain_test": (data.test_x[~test_forget], data.test_y[~test_forget]),
        "forget_train": (data.train_x[train_forget], data.train_y[train_forget]),
        "retain_train": (data.train_x[~train_forget], data.train_y[~train_forget]),
    }
