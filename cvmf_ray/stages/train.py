"""Stage 1: train an `original` model, or a `retrain` gold standard (the same recipe without `exclude`).

SGD + Nesterov + cosine annealing per step, the published CIFAR/FashionMNIST recipe (or a short study
recipe's warm-up, linear decay and label smoothing: config.py `PRESETS`). The data never leaves the device
(`DeviceLoader`); the model is channels_last, optionally compiled, and the step runs in bf16 autocast where
the hardware computes bf16 natively (CUDA; AVX512-BF16/AMX CPUs); one host sync per epoch. All randomness is
derived from (seed, epoch), so a run resumed from an epoch checkpoint is bit-identical on CPU.

`train_reference` is the plain DataLoader + torchvision-transforms fp32 loop the fast path replaces:
tests/test_train.py checks both reach the same accuracy, scripts/bench_train.py times them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import Augment, DeviceLoader, torchvision_loader
from cvmf_ray.datasets import ImageData
from cvmf_ray.errors import CellError
from cvmf_ray.meter import Meter

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
    meter: Meter | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` on `data.train_*` minus the samples where `exclude` (a bool mask) is True.

    `meter` counts epochs and images for the progress line (cvmf_ray/meter.py).

    Returns the trained model (eval mode, default memory format) and `{"train_seconds", "train_loss", "epochs",
    "train_images"}` (the images it trained on: what a held-out split or an excluded forget set left).
    """
    started = time.perf_counter()
    device = torch.device(device)
    meter = meter or Meter()
    keep = ~exclude if exclude is not None else slice(None)
    # channels_last: what tensor cores and oneDNN's fastest convolutions read (8-30% on this project's CPUs too)
    loader = DeviceLoader(
        data.train_x[keep], data.train_y[keep], recipe.batch_size, data.mean, data.std,
        Augment(recipe.crop_padding, recipe.flip), device, memory_format=torch.channels_last, meter=meter,
    )  # fmt: skip
    model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    first_epoch = 0 if resume is None else restore(model, optimizer, resume)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    forward = torch.compile(model) if recipe.compile else model
    bf16 = recipe.bf16 and native_bf16(device)
    mean_loss = float("nan")
    for epoch in meter.epochs(recipe.epochs, first_epoch, per_epoch=len(loader.y)):
        mean_loss = train_epoch(forward, loader, optimizer, recipe, epoch, seed, bf16)
        if not math.isfinite(mean_loss):
            raise CellError(f"training diverged at epoch {epoch + 1}: mean loss {mean_loss}")
        done = epoch + 1
        if on_epoch is not None and done % recipe.checkpoint_every == 0 and done < recipe.epochs:
            on_epoch(done, checkpoint(model, optimizer, done))  # the last epoch's state is the trained model
    model.to(memory_format=torch.contiguous_format).eval()
    return model, {"train_seconds": time.perf_counter() - started, "train_loss": mean_loss, "epochs": recipe.epochs,
                   "train_images": len(loader.y)}  # fmt: skip


def train_epoch(forward, loader: DeviceLoader, optimizer, recipe: TrainRecipe, epoch: int, seed: int, bf16: bool):
    """One pass over `loader`; returns the mean loss. Reads the loss back once, at the end."""
    forward.train()
    epoch_seed = seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # dropout (mobilenet_v2) draws from the global generator
    loss_sum = torch.zeros((), device=loader.device)
    for i, (x, y) in enumerate(loader.epoch(epoch_seed)):
        set_lr(optimizer, recipe, epoch * len(loader) + i, recipe.epochs * len(loader))
        with torch.autocast(loader.device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y, label_smoothing=recipe.label_smoothing)
        step(optimizer, loss, recipe.grad_clip)
        loss_sum += loss.detach()
    return loss_sum.item() / len(loader)


def train_reference(
    model: nn.Module,
    data: ImageData,
    recipe: TrainRecipe,
    seed: int,
    *,
    device: str | torch.device = "cpu",
    workers: int = 0,
    on_epoch: EpochHook | None = None,
) -> tuple[nn.Module, dict]:
    """The textbook loop: `DataLoader` + torchvision transforms on PIL images, fp32, loss logged every step.

    Same optimizer, schedule and clipping as `train`; only the data path and the precision differ.
    """
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)  # torchvision's transforms draw from the global generator (workers=0)
    loader = torchvision_loader(
        data.train_x, data.train_y, recipe.batch_size, data.mean, data.std, Augment(recipe.crop_padding, recipe.flip),
        seed=seed, workers=workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    model.to(device)
    optimizer = make_optimizer(model, recipe)
    total_steps = recipe.epochs * len(loader)
    for epoch in range(recipe.epochs):
        model.train()
        loss_sum = 0.0
        for i, (x, y) in enumerate(loader):
            set_lr(optimizer, recipe, epoch * len(loader) + i, total_steps)
            logits = model(x.to(device, non_blocking=True))
            loss = F.cross_entropy(logits, y.to(device, non_blocking=True), label_smoothing=recipe.label_smoothing)
            step(optimizer, loss, recipe.grad_clip)
            loss_sum += loss.item()
        if on_epoch is not None:
            on_epoch(epoch + 1, checkpoint(model, optimizer, epoch + 1))
    return model.eval(), {
        "train_seconds": time.perf_counter() - started,
        "train_loss": loss_sum / len(loader),
        "epochs": recipe.epochs,
    }


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays: on CUDA, and on CPUs with bf16 dot products (AVX512-BF16, AMX, Arm BF16;
    2x fp32 on a Zen 4 core). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type != "cpu":
        return device.type == "cuda"
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # absent from older torch: fp32 then
    return any(capabilities.get(flag) for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay,
    )  # fmt: skip


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def set_lr(optimizer: torch.optim.Optimizer, recipe: TrainRecipe, step_index: int, total_steps: int) -> None:
    lr = recipe.lr * lr_factor(recipe, step_index, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr


def lr_factor(recipe: TrainRecipe, step_index: int, total_steps: int) -> float:
    """The learning rate at a step as a fraction of the peak: a linear rise over the first `warmup` of the steps
    (a short run cannot afford the early steps' large, badly-aimed updates at the peak rate), then the schedule
    over the rest. Without warm-up, exactly the published per-step cosine."""
    warm = recipe.warmup * total_steps
    if step_index < warm:
        return min(1.0, (step_index + 1) / warm)
    progress = (step_index - warm) / (total_steps - warm)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.schedule == "onecycle":
        return 1 - progress
    return 1.0


def checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict:
    """Resumable state in the default memory format (safetensors refuses channels_last strides)."""
    opt_state = optimizer.state_dict()
    opt_state["state"] = {
        index: {k: v.contiguous() if torch.is_tensor(v) else v for k, v in state.items()}
        for index, state in opt_state["state"].items()
    }
    model_state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return {"model": model_state, "optimizer": opt_state, "epoch": epoch}


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> int:
    """Load a `checkpoint`; returns the number of epochs it had done."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    match_layout(optimizer)
    return int(state["epoch"])


def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored momentum buffers their parameter's memory format: the multi-tensor (foreach) update
    only takes its fast path when parameter, gradient and buffer strides agree."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = torch.empty_like(param).copy_(value)
