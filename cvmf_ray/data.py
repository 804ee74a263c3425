"""The on-device data path: a uint8 tensor on the training device, augmented and normalised in batches.

Same semantics as torchvision's `RandomCrop(size, padding=p)` + `RandomHorizontalFlip()` + `Normalize`
(zero padding in pixel space, then normalisation), without PIL or DataLoader workers: airbench-style.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


def normalize(x_uint8: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """The evaluation transform, shared by training, calibration and evaluation."""
    mean_t = torch.tensor(mean, device=x_uint8.device, dtype=dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x_uint8.device, dtype=dtype).view(1, -1, 1, 1)
    return (x_uint8.to(dtype) / 255 - mean_t) / std_t


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch back to its own size (one gather, no loop)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x


class DeviceLoader:
    """Batches of (normalised float images, labels) drawn from uint8 tensors already on `device`.

    `epoch(seed)` derives all randomness from its seed, so a resumed run sees the same batches.
    """

    def __init__(self, x, y, batch_size: int, mean, std, augment: Augment = Augment(), device="cpu"):
        self.x, self.y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        self.batch_size, self.mean, self.std, self.augment = batch_size, mean, std, augment
        self.device = torch.device(device)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def epoch(self, seed: int, shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(self.device).manual_seed(seed)
        n = len(self.y)
        order = torch.randperm(n, generator=generator, device=self.device) if shuffle else None
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size] if shuffle else slice(start, start + self.batch_size)
            xb = self.augment(self.x[idx], generator)
            yield normalize(xb, self.mean, self.std), self.y[idx]
