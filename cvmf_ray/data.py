"""The on-device data path: a uint8 tensor on the training device, augmented and normalised in batches.

Same semantics as torchvision's `RandomCrop(size, padding=p)` + `RandomHorizontalFlip()` + `ToTensor()` +
`Normalize` (zero padding in pixel space, then normalisation), without PIL or DataLoader workers:
airbench-style. `torchvision_loader` is that torchvision pipeline itself, the reference the tests and
`scripts/bench_train.py` hold this path to.

It takes torch from `cvmf_ray.lazy`, as the registry entries that import it do (cvmf_ray/lazy.py says why).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cvmf_ray.lazy import torch
from cvmf_ray.meter import Meter


def normalize(x_uint8: torch.Tensor, mean, std, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The evaluation transform, bit for bit `ToTensor()` + `Normalize(mean, std)`: (x / 255 - mean) / std.

    `mean`/`std` are tuples or tensors; tensors already on the device avoid a host-to-device copy per call.
    """
    dtype = torch.float32 if dtype is None else dtype
    mean_t = torch.as_tensor(mean, device=x_uint8.device, dtype=dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=x_uint8.device, dtype=dtype).view(1, -1, 1, 1)
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
    `memory_format=torch.channels_last` hands batches over in the layout a channels_last model wants.
    A `meter` (cvmf_ray/meter.py) counts the images handed out, for the progress line's images per second.
    """

    def __init__(
        self, x, y, batch_size: int, mean, std, augment: Augment = Augment(), device="cpu",
        memory_format: torch.memory_format | None = None, meter: Meter | None = None,
    ):  # fmt: skip
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.mean = torch.tensor(mean, dtype=torch.float32).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).to(self.device)
        self.batch_size, self.augment = batch_size, augment
        self.memory_format = torch.contiguous_format if memory_format is None else memory_format
        self.meter = meter

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def epoch(self, seed: int, shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(self.device).manual_seed(seed)
        n = len(self.y)
        order = torch.randperm(n, generator=generator, device=self.device) if shuffle else None
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size] if shuffle else slice(start, start + self.batch_size)
            xb = normalize(self.augment(self.x[idx], generator), self.mean, self.std)
            if self.meter is not None:
                self.meter.count(len(xb))
            yield xb.contiguous(memory_format=self.memory_format), self.y[idx]


# ---------------------------------------------------------------------------------------------------------
# the reference: torchvision transforms on one PIL image at a time, batched by a DataLoader


def torchvision_transform(mean, std, augment: Augment, size: tuple[int, int]):
    """The torchvision pipeline `Augment` + `normalize` reproduce, for images of `size` (h, w)."""
    from torchvision import transforms  # the reference path only: importing torchvision costs ~1.5 s

    steps = [transforms.RandomCrop(size, padding=augment.crop_padding)] if augment.crop_padding else []
    steps += [transforms.RandomHorizontalFlip()] if augment.flip else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


class PILImages:
    """uint8 [N, C, H, W] images served one PIL image at a time, as torchvision's dataset classes do (a map-style
    dataset: `DataLoader` needs only `__len__` and `__getitem__`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        from PIL import Image  # the reference path only: every Ray worker imports this module

        self.to_image = Image.fromarray
        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as PIL wants it
        self.y, self.transform = y.tolist(), transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = self.x[i]
        image = self.to_image(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)  # mode "L" or "RGB"
        return self.transform(image), self.y[i]


def torchvision_loader(
    x, y, batch_size: int, mean, std, augment: Augment, *, seed: int, workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A plain shuffling DataLoader over `PILImages` with `torchvision_transform` (the slow path)."""
    transform = torchvision_transform(mean, std, augment, tuple(x.shape[2:]))
    return torch.utils.data.DataLoader(
        PILImages(x, y, transform), batch_size, shuffle=True, num_workers=workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
    )  # fmt: skip
