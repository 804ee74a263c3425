"""FT: fine-tune the original on the retain set only, relying on catastrophic forgetting.

Defaults: 10 epochs, lr 0.01, batch 128, SGD momentum 0.9, wd 5e-4 (Machine-Unlearning-Comparator UI
defaults; OPTML Unlearn-Sparse README uses lr 0.01 × 10 epochs).
"""

from dataclasses import dataclass

import torch.nn.functional as F

from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import epoch_seed, sgd, step


@dataclass
class FinetuneParams:
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128


@register_method("finetune", FinetuneParams)
def finetune(model, data: UnlearnData, params: FinetuneParams):
    optimizer = sgd(model, params.lr)
    retain = data.loader("retain", params.batch_size)
    for epoch in range(params.epochs):
        for x, y in retain.epoch(epoch_seed(data.seed, epoch)):
            step(optimizer, F.cross_entropy(model(x), y))
    return model
