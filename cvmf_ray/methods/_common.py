"""Pieces the methods share: hyperparameter types, optimizers, one checked step, seeds, teachers, batches."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

from cvmf_ray.data import DeviceLoader
from cvmf_ray.errors import Diverged
from cvmf_ray.lazy import F, nn, torch

# Hyperparameter types, the config's too (cvmf_ray/values.py): `Method.resolve_params` turns an out-of-range value
# into a UsageError.
from cvmf_ray.values import Count, Finite, Fraction, Index, NonNegative, Positive  # noqa: F401 (re-exported)


def sgd(model: nn.Module, lr: float, *, weight_decay: float, momentum: float = 0.9):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
    """zero_grad → backward → optional clip → step; a non-finite loss fails the cell, never the grid."""
    if not torch.isfinite(loss):
        raise Diverged(f"unlearning diverged: loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing to 0 over `total_steps`, stepped once per batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / total_steps)))


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Distinct, reproducible shuffling seeds per (run seed, epoch, data stream)."""
    return seed * 1_000_003 + epoch * 101 + stream


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: an eval-mode copy of `model` as it is now, with no gradients."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) at a temperature, × T², batch mean (RepDistiller's `DistillKL`, used by SCRUB)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def wrong_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from `y` for every sample."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    return (y + shift) % num_classes


class ForgetRetainMix:
    """forget ∪ retain as one shuffled set, concatenated once: each pass may relabel the forget samples.

    `retain_x/y` may be a subset of the retain set.
    """

    def __init__(self, data, retain_x: torch.Tensor, retain_y: torch.Tensor, batch_size: int) -> None:
        self.n_forget, self.retain_y = len(data.forget_x), retain_y
        x = torch.cat([data.forget_x, retain_x])
        index = torch.arange(len(x), device=retain_y.device)
        self.loader = DeviceLoader(
            x, index, batch_size, data.mean, data.std, data.augment, data.device, meter=data.meter
        )

    def epoch(self, forget_y: torch.Tensor, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One pass, batches of (x, y, is_forget); `forget_y` labels the forget samples (RL: random ones)."""
        y = torch.cat([forget_y, self.retain_y])
        for xb, ib in self.loader.epoch(seed):
            yield xb, y[ib], ib < self.n_forget


def cycled(loader: DeviceLoader, seed: int, stream: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches from `loader`, reshuffled on every pass (`itertools.cycle` without the replay)."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch_seed(seed, epoch, stream))
        epoch += 1
