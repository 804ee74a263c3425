"""A deployment step: re-estimate every BatchNorm's running statistics, with no gradient step.

Quantization-aware training and compression flows do this before they fold BatchNorm into the convolutions:
AIMET's `reestimate_bn_stats(model, loader, num_batches=100)`, NNCF's `batchnorm_adaptation` initializer,
Nagel et al. (ICML 2022) `ReestimateBNStats`. Each resets the running statistics and averages the per-batch
statistics over the batches seen (momentum None: a cumulative average), in train mode for BatchNorm only, on
training data (../shared/reference/where-forgetting-lives.md §2). Where a method's forgetting lives in the
running statistics, this step is what would undo it in deployment.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from cvmf_ray.data import DeviceLoader
from cvmf_ray.errors import CellError


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """Reset every BatchNorm's running statistics of `model` and re-estimate them as the cumulative average over
    `batches` shuffled batches of `images` (uint8, normalised here, no augmentation: a deployer's evaluation
    transform), passing over the images again when they hold fewer. Everything else runs in eval mode (dropout
    off); no parameter changes. Returns the model (eval mode) and what was used: {"bn_reestimate_batches",
    "bn_reestimate_batch_size", "bn_reestimate_images", "bn_reestimate_seconds"}."""
    layers = batchnorm_layers(model)
    if not layers:
        raise CellError("the model has no BatchNorm layer: BatchNorm re-estimation does not apply to it")
    started = time.perf_counter()
    model.to(device).eval()
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch weighs the same
        layer.train()
    loader = DeviceLoader(images, labels, batch_size, mean, std, device=device)
    full = min(batch_size, len(labels))  # a pass's short last batch is skipped: its statistics are noisier
    seen, images_seen, epoch = 0, 0, 0
    while seen < batches:
        for x, _ in loader.epoch(seed * 1_000 + epoch):
            if len(x) < full:
                continue
            model(x)
            seen, images_seen = seen + 1, images_seen + len(x)
            if seen == batches:
                break
        epoch += 1
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
    used = {"bn_reestimate_batches": seen, "bn_reestimate_batch_size": batch_size, "bn_reestimate_images": images_seen}
    return model, {**used, "bn_reestimate_seconds": time.perf_counter() - started}
