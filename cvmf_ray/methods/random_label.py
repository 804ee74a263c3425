"""RL: train on the forget set with random wrong labels, interleaved with the retain set.

Defaults: 3 epochs, lr 1e-3, batch 64 (Machine-Unlearning-Comparator); forget labels are drawn uniformly
from the other classes, as in the Comparator (OPTML draws from all classes).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import epoch_seed, sgd, step


@dataclass
class RandomLabelParams:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64


def wrong_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from `y` for every sample."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    return (y + shift) % num_classes


@register_method("random_label", RandomLabelParams)
def random_label(model, data: UnlearnData, params: RandomLabelParams):
    optimizer = sgd(model, params.lr)
    forget = data.loader("forget", params.batch_size)
    retain = data.loader("retain", params.batch_size)
    generator = torch.Generator(data.device).manual_seed(data.seed)
    for epoch in range(params.epochs):
        for x, y in forget.epoch(epoch_seed(data.seed, epoch, stream=1)):
            step(optimizer, F.cross_entropy(model(x), wrong_labels(y, data.num_classes, generator)))
        for x, y in retain.epoch(epoch_seed(data.seed, epoch, stream=2)):
            step(optimizer, F.cross_entropy(model(x), y))
    return model
