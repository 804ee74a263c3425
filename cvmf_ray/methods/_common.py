"""Pieces every gradient-based method shares: its optimizer, one checked step, per-epoch seeds."""

import torch
from torch import nn

from cvmf_ray.errors import CellError


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
    """zero_grad → backward → optional clip → step; a non-finite loss fails the cell, never the grid."""
    if not torch.isfinite(loss):
        raise CellError(f"unlearning diverged: loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Distinct, reproducible shuffling seeds per (run seed, epoch, data stream)."""
    return seed * 1_000_003 + epoch * 101 + stream
