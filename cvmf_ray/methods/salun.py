"""SalUn (Fan et al., ICLR'24 "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency"):
random-label unlearning restricted to the weights most salient for the forget set.

Saliency = |Σ ∇θ(−CE)| over the forget set (model in eval mode), thresholded globally over all parameters
as in the paper (m = 1[|g| ≥ γ], γ set so that a `mask_ratio` fraction passes); only masked-in weights
move, every other weight stays exactly at its original value and its momentum is zeroed
(OPTML-Group/Unlearn-Saliency `generate_mask.py` and `RL.py`; that mask script also takes SGD steps while
accumulating, here the weights stay fixed). The RL part is `random_label`'s loop (the Comparator's).

Defaults: mask ratio 0.5 (the README's `with_0.5.pt`); 5 epochs, lr 1e-3, batch 128, the
Machine-Unlearning-Comparator's class-wise SalUn on CIFAR-10. The README's random-forgetting run uses
lr 0.013 × 10 epochs.

On `digits` (cvmf_ray/datasets/digits.py): 3 epochs, lr 0.01, batch 64, as `random_label` there: the
published values are too few steps there (as for RL).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Fraction, NonNegative, Positive
from cvmf_ray.methods.random_label import train_relabelled


@dataclass
class SalUnParams:
    epochs: Count = 5
    lr: Positive = 1e-3
    batch_size: Count = 128
    mask_ratio: Fraction = 0.5  # fraction of all weights allowed to move, the most salient first
    weight_decay: NonNegative = 5e-4


SEARCH_SPACE = {"mask_ratio": {"uniform": [0.0, 1.0]}}  # DeepUnlearn's SalUn threshold, U[0, 1]


def masked_sgd(
    params: list[torch.nn.Parameter], masks: list[torch.Tensor], lr: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD (momentum 0.9) that moves only weights where `mask` is 1; the rest stay at their start.

    A plain SGD with two step hooks: before each step the gradients are masked, after it the masked-out weights
    are put back (weight decay moved them too) and their momentum is zeroed.
    """
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    keep, start = [mask.bool() for mask in masks], [p.detach().clone() for p in params]

    def mask_gradients(_optimizer, _args, _kwargs) -> None:
        with torch.no_grad():
            for p, mask in zip(params, masks, strict=True):
                if p.grad is not None:
                    p.grad.mul_(mask)

    def restore_masked(_optimizer, _args, _kwargs) -> None:
        with torch.no_grad():
            for p, mask, kept, started in zip(params, masks, keep, start, strict=True):
                p.copy_(torch.where(kept, p, started))
                buffer = optimizer.state[p].get("momentum_buffer")
                if buffer is not None:
                    buffer.mul_(mask)

    optimizer.register_step_pre_hook(mask_gradients)
    optimizer.register_step_post_hook(restore_masked)
    return optimizer


def saliency_masks(model, data: UnlearnData, ratio: float, batch_size: int) -> list[torch.Tensor]:
    """One 0/1 mask per parameter: 1 for the globally top-`ratio` |∇(−CE)| summed over the forget set."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    model.eval()
    for x, y in data.loader("forget", batch_size, augment=False).epoch(data.seed, shuffle=False):
        grads = torch.autograd.grad(-F.cross_entropy(model(x), y), params)
        for acc, g in zip(total, grads, strict=True):
            acc += g
    model.train()
    flat = torch.cat([g.abs().flatten() for g in total])
    keep = max(1, int(ratio * flat.numel()))
    chosen = torch.zeros_like(flat)
    chosen[flat.topk(keep).indices] = 1
    return [m.view_as(p) for m, p in zip(chosen.split([p.numel() for p in params]), params, strict=True)]


@register_method("salun", SalUnParams, search_space=SEARCH_SPACE)
def salun(model, data: UnlearnData, params: SalUnParams):
    masks = saliency_masks(model, data, params.mask_ratio, params.batch_size)
    optimizer = masked_sgd(list(model.parameters()), masks, params.lr, params.weight_decay)
    return train_relabelled(model, data, params, optimizer)
