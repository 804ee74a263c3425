"""CF-k, catastrophic forgetting of the last k layers (Goel et al., arXiv 2201.06640, "Towards Adversarial
Evaluations for Inexact Machine Unlearning"): fine-tune only the model's last block on the retain set, the rest
frozen, and rely on the block forgetting what only the forget set taught it.

As `meghdadk/SCRUB`, `small_scale_unlearning.ipynb` (`fk_fientune`, `run_train_epoch`): the model in eval mode
(BatchNorm normalises with the original's running statistics and never updates them), cross-entropy, plain SGD
(no momentum), weight decay 0. The block, k = 1, is `ModelInfo.last_block` (cvmf_ray/models/__init__.py): the
last stage of blocks with the classifier (ResNet's layer4 and fc: the notebook unfreezes layer4, DeepUnlearn's
`catastrophic_forgetting_k.py` adds the classifier). Only its parameters change; every buffer stays the original's.

Defaults: 10 epochs, lr 0.01 (the notebook's `cfk_epochs`, `cfk_lr`), batch 256 (DeepUnlearn's
`catastrophic_forgetting_k.py`).

On `digits` (cvmf_ray/datasets/digits.py): lr 0.05, batch 8. Its 1,214 retain images are 5 steps per epoch at
batch 256: 50 plain-SGD steps at lr 0.01 leave the class at 100%, and so do batch 16 at lr 0.01 and batch 8 at
lr 0.03; batch 8 at lr 0.05 (1,520 steps) forgets it (forget-train 0.0, retain-train 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.errors import CellError
from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, NonNegative, Positive, epoch_seed, step


@dataclass
class LastBlockParams:
    epochs: Count = 10
    lr: Positive = 0.01
    batch_size: Count = 256
    weight_decay: NonNegative = 0.0  # the notebook's
    # searched: only the common lr, weight_decay, epochs, batch_size (cvmf_ray/search_space.py); DeepUnlearn's number of
    # blocks (1-10) has no field here: the block is the model's declared last one (k = 1)


def last_block(model, data: UnlearnData, method: str) -> list[torch.nn.Parameter]:
    """The parameters whose names start with one of `data.last_block`'s prefixes."""
    block = [p for name, p in model.named_parameters() if name.startswith(data.last_block)]
    if not block:
        raise CellError(f"{method} needs the model's last block; none of its parameters is under {data.last_block}")
    return block


def train_last_block(model, data: UnlearnData, params: LastBlockParams, block: list[torch.nn.Parameter]):
    """Cross-entropy on the retain set in eval mode, SGD on `block` only (the rest takes no gradient)."""
    model.eval()
    model.requires_grad_(False)
    for p in block:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(block, lr=params.lr, weight_decay=params.weight_decay)
    retain = data.loader("retain", params.batch_size)
    for epoch in data.epochs(params.epochs):
        for x, y in retain.epoch(epoch_seed(data.seed, epoch)):
            step(optimizer, F.cross_entropy(model(x), y))
    return model.requires_grad_(True)


@register_method("cf_k", LastBlockParams, trains_bn=False, needs_last_block=True)
def cf_k(model, data: UnlearnData, params: LastBlockParams):
    return train_last_block(model, data, params, last_block(model, data, "cf_k"))
