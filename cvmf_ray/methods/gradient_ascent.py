"""GA: gradient ascent on the forget set (maximise its cross-entropy), nothing on the retain set.

Defaults: 5 epochs, lr 1e-3, batch 64, gradient-norm clip 100. The Comparator's UI default is lr 1e-4;
SalUn issue #8 reports that lr 1e-4 barely forgets and advises 5e-4 to 1e-3.
"""

from dataclasses import dataclass

import torch.nn.functional as F

from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import epoch_seed, sgd, step


@dataclass
class GradientAscentParams:
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    clip: float = 100.0


@register_method("gradient_ascent", GradientAscentParams)
def gradient_ascent(model, data: UnlearnData, params: GradientAscentParams):
    optimizer = sgd(model, params.lr)
    forget = data.loader("forget", params.batch_size)
    for epoch in range(params.epochs):
        for x, y in forget.epoch(epoch_seed(data.seed, epoch)):
            step(optimizer, -F.cross_entropy(model(x), y), params.clip)
    return model
