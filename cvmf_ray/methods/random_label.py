"""RL: train on forget ∪ retain with every forget sample relabelled to a random wrong class.

Defaults: Machine-Unlearning-Comparator RL: retain and forget sets shuffled together, forget labels redrawn
(every epoch) from the *other* classes, SGD momentum 0.9, wd 5e-4, 3 epochs, lr 1e-3, batch 64. OPTML
(Unlearn-Sparse/Saliency `RL`) draws from all classes, mixes the two sets for CIFAR-100 and alternates a
forget pass and a retain pass for CIFAR-10. Mixing matters with BatchNorm: a forget-only batch normalises
with its own statistics, and on `digits` the alternating variant does not forget at all.

On `digits`: lr 0.01 (OPTML's `unlearn_lr` default; cvmf_ray/datasets/digits.py): one epoch there is 21
steps at batch 64 (CIFAR: ~780), and at 1e-3 forget-train accuracy stays around 60%.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, ForgetRetainMix, NonNegative, Positive, epoch_seed, sgd, step, wrong_labels


@dataclass
class RandomLabelParams:
    epochs: Count = 3
    lr: Positive = 1e-3
    batch_size: Count = 64
    weight_decay: NonNegative = 5e-4
    # searched: only the common lr, weight_decay, epochs, batch_size (cvmf_ray/search_space.py)


def train_relabelled(model, data: UnlearnData, params, optimizer: torch.optim.Optimizer):
    """The RL loop, shared with SalUn (which passes an optimizer that moves only salient weights)."""
    labels = torch.Generator(data.device).manual_seed(data.seed)
    mix = ForgetRetainMix(data, data.retain_x, data.retain_y, params.batch_size)
    for epoch in data.epochs(params.epochs):
        forget_y = wrong_labels(data.forget_y, data.num_classes, labels)
        for x, y, _ in mix.epoch(forget_y, epoch_seed(data.seed, epoch)):
            step(optimizer, F.cross_entropy(model(x), y))
    return model


@register_method("random_label", RandomLabelParams)
def random_label(model, data: UnlearnData, params: RandomLabelParams):
    return train_relabelled(model, data, params, sgd(model, params.lr, weight_decay=params.weight_decay))
