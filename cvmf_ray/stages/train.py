"""Stage 1: train an `original` model, or a `retrain` gold standard (the same recipe without `exclude`).

SGD + Nesterov + cosine annealing per step, the published CIFAR/FashionMNIST recipe. All randomness is
derived from (seed, epoch), so a run resumed from an epoch checkpoint is bit-identical on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import Augment, DeviceLoader
from cvmf_ray.datasets import ImageData
from cvmf_ray.errors import CellError

# on_epoch(epoch_done, state) is how a caller (the Ray layer) takes resumable checkpoints.
EpochHook = Callable[[int, dict], None]


def train(
    model: nn.Module,
    data: ImageData,
    recipe: TrainRecipe,
    seed: int,
    exclude: torch.Tensor | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: dict | None = None,
    on_epoch: EpochHook | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` on `data.train_*` minus the samples where `exclude` (a bool mask) is True.

    Returns the trained model (eval mode) and `{"train_seconds", "train_loss", "epochs"}`.
    """
    started = time.perf_counter()
    keep = ~exclude if exclude is not None else slice(None)
    loader = DeviceLoader(
        data.train_x[keep], data.train_y[keep], recipe.batch_size, data.mean, data.std,
        Augment(recipe.crop_padding, recipe.flip), device,
    )  # fmt: skip
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay,
    )  # fmt: skip
    first_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        first_epoch = int(resume["epoch"])
    total_steps = recipe.epochs * len(loader)
    loss_sum = torch.zeros((), device=device)
    for epoch in range(first_epoch, recipe.epochs):
        model.train()
        loss_sum.zero_()
        for i, (x, y) in enumerate(loader.epoch(seed * 100_003 + epoch)):
            _set_lr(optimizer, recipe, epoch * len(loader) + i, total_steps)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            loss_sum += loss.detach()
        mean_loss = loss_sum.item() / len(loader)  # one CPU-GPU sync per epoch
        if not math.isfinite(mean_loss):
            raise CellError(f"training diverged at epoch {epoch + 1}: mean loss {mean_loss}")
        done = epoch + 1
        if on_epoch is not None and (done % recipe.checkpoint_every == 0 or done == recipe.epochs):
            on_epoch(done, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": done})
    model.eval()
    final_loss = loss_sum.item() / len(loader) if first_epoch < recipe.epochs else float("nan")
    return model, {
        "train_seconds": time.perf_counter() - started,
        "train_loss": final_loss,
        "epochs": recipe.epochs,
    }


def _set_lr(optimizer, recipe: TrainRecipe, step: int, total_steps: int) -> None:
    lr = recipe.lr
    if recipe.schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * step / total_steps))
    for group in optimizer.param_groups:
        group["lr"] = lr
