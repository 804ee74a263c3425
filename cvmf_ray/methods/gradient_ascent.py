"""GA: gradient ascent on the forget set (maximise its cross-entropy), nothing on the retain set.

Defaults: 5 epochs, lr 1e-3, batch 256, SGD momentum 0.9, wd 5e-4, gradient-norm clip 100: the
Machine-Unlearning-Comparator's published CIFAR-10 GA run (its result files: 5 / 256 / 1e-3). Its UI
(7 epochs) and the OPTML Unlearn-Sparse README use lr 1e-4; SalUn issue #8 reports that 1e-4 barely
forgets and advises 5e-4 to 1e-3.

On `digits`: batch 64 (cvmf_ray/datasets/digits.py): the forget class (135 images) would be one step per
epoch at 256. There (seeds 0-3) forget-train accuracy ends at 3-8% and retain-train at 96-99.5%: with no
retain term, GA pays in utility.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, NonNegative, Positive, epoch_seed, sgd, step


@dataclass
class GradientAscentParams:
    epochs: Count = 5
    lr: Positive = 1e-3
    batch_size: Count = 256
    clip: Positive = 100.0
    weight_decay: NonNegative = 5e-4
    # searched: only the common lr, weight_decay, epochs, batch_size (cvmf_ray/search_space.py); the clip is a safety
    # bound, not a coefficient, and stays


@register_method("gradient_ascent", GradientAscentParams)
def gradient_ascent(model, data: UnlearnData, params: GradientAscentParams):
    optimizer = sgd(model, params.lr, weight_decay=params.weight_decay)
    forget = data.loader("forget", params.batch_size)
    for epoch in data.epochs(params.epochs):
        for x, y in forget.epoch(epoch_seed(data.seed, epoch)):
            step(optimizer, -F.cross_entropy(model(x), y), params.clip)
    return model
