"""FT: fine-tune on the retain set only and rely on catastrophic forgetting of the forget set.

Defaults: the NeurIPS 2023 Machine Unlearning Challenge starting-kit baseline (unlearning-challenge/starting-kit,
`unlearning()`): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine annealing to 0, 5 epochs, batch 128.
The Comparator (10 epochs, lr 0.01, batch 128) and OPTML Unlearn-Sparse (lr 0.01 × 10 epochs) use a
smaller lr on CIFAR, where one epoch is ~350 steps.

On `digits`: batch 16 (cvmf_ray/datasets/digits.py). Forgetting by fine-tuning needs many noisy steps; with
1,212 retain images (10 steps per epoch at batch 128) lr 0.01-0.3 at batch 128 leaves forget-train
accuracy at 100%, while batch 16 (76 steps per epoch) forgets the class completely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, NonNegative, Positive, cosine, epoch_seed, sgd, step


@dataclass
class FinetuneParams:
    epochs: Count = 5
    lr: Positive = 0.1  # peak, cosine-annealed to 0 per step
    batch_size: Count = 128
    weight_decay: NonNegative = 5e-4
    # searched: only the common lr, weight_decay, epochs, batch_size (cvmf_ray/search_space.py)


def fine_tune(model, data: UnlearnData, params, penalty: Callable[[int], torch.Tensor] | None = None):
    """Cross-entropy on the retain set, plus `penalty(epoch)` when given (ℓ1-sparse)."""
    retain = data.loader("retain", params.batch_size)
    optimizer = sgd(model, params.lr, weight_decay=params.weight_decay)
    schedule = cosine(optimizer, params.epochs * len(retain))
    for epoch in data.epochs(params.epochs):
        for x, y in retain.epoch(epoch_seed(data.seed, epoch)):
            loss = F.cross_entropy(model(x), y)
            step(optimizer, loss if penalty is None else loss + penalty(epoch))
            schedule.step()
    return model


@register_method("finetune", FinetuneParams)
def finetune(model, data: UnlearnData, params: FinetuneParams):
    return fine_tune(model, data, params)
