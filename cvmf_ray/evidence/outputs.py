"""Distance to the gold standard in output space, and per-class accuracy vectors.

Forget accuracy sees only the argmax; two models can agree on every label and still differ in what they
know. These compare whole softmax outputs, per sample, with the retrain model's on the same images:

- Jensen–Shannon divergence in bits (log base 2): symmetric, bounded in [0, 1], 0 only for identical
  outputs; the measure Bad Teacher's ZRF is built on (Chundawat et al., AAAI'23).
- KL(retrain ‖ model) in nats (natural log): the retrain model is the reference distribution, so this is the
  expected extra log-loss of using the model's outputs in place of the gold standard's, weighted by where the
  gold standard puts its mass: the objective a student minimises when distilled from a teacher, here the
  retrain model. Unlike JS it is unbounded: it keeps ranking models whose outputs are far from retrain's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DISTANCE_SPLITS = ("forget_train", "test")


def distance_to_retrain(logits: dict[str, torch.Tensor], retrain_logits: dict[str, torch.Tensor]) -> dict:
    """`js_to_retrain_{split}` and `kl_to_retrain_{split}` for forget-train and test.

    Both dicts map split names to logits of the same images in the same order (the forget set is
    deterministic given the seed); an empty split gives nulls.
    """
    columns = {}
    for split in DISTANCE_SPLITS:
        model, retrain = logits[split], retrain_logits[split]
        empty = len(model) == 0
        columns[f"js_to_retrain_{split}"] = None if empty else js_divergence(model, retrain)
        columns[f"kl_to_retrain_{split}"] = None if empty else kl_divergence(retrain, model)
    return columns


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean over samples of JS(softmax p, softmax q) in bits, computed in float64 from log-probabilities."""
    log_p, log_q = F.log_softmax(logits_p.double(), 1), F.log_softmax(logits_q.double(), 1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)  # log of the mixture (p + q) / 2
    js = 0.5 * (_kl_rows(log_p, log_m) + _kl_rows(log_q, log_m)) / math.log(2)
    return float(js.clamp_min(0).mean())  # identical outputs: 0, not a rounding error's -1e-17


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax reference ‖ softmax logits) in nats, in float64."""
    return float(_kl_rows(F.log_softmax(reference_logits.double(), 1), F.log_softmax(logits.double(), 1)).mean())


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k (log p_k − log q_k) per row; terms with p_k = 0 contribute 0 (`xlogy` convention)."""
    return torch.where(log_p.isneginf(), 0.0, log_p.exp() * (log_p - log_q)).sum(1)


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy on each class's samples, indexed by class; null for a class with no samples here."""
    correct = torch.bincount(y[logits.argmax(1) == y], minlength=num_classes)
    total = torch.bincount(y, minlength=num_classes)
    return [int(c) / int(n) if n else None for c, n in zip(correct, total, strict=True)]
