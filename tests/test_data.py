"""The on-device loader against torchvision's own RandomCrop + RandomHorizontalFlip + ToTensor + Normalize.

Every pixel of the probe image has its own value, so each augmented output tells which crop offset and
flip produced it. Each output of the fast path must be bit-identical to one of the outputs torchvision
can reach, and the frequencies of those outcomes must match torchvision's (both uniform).
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import chi2_contingency, chisquare

from cvmf_ray.data import Augment, DeviceLoader, PILImages, torchvision_transform

PAD = 3
MEAN, STD = (0.2, 0.5, 0.7), (0.3, 0.25, 0.2)
H, W = 6, 5  # not square, so swapped rows and columns would show


def probe(channels: int) -> torch.Tensor:
    """One [C, H, W] uint8 image whose pixels are 1, 2, 3, ... (0 is left for the zero padding)."""
    return torch.arange(1, channels * H * W + 1, dtype=torch.uint8).view(channels, H, W)


def pil(image: torch.Tensor) -> Image.Image:
    return PILImages(image[None], torch.zeros(1, dtype=torch.int64), lambda im: im)[0][0]


def reachable(image: torch.Tensor, channels: int) -> dict[bytes, tuple[int, int, int]]:
    """Every output torchvision's pipeline can produce, keyed by its bytes -> (row offset, col offset, flip).

    RandomCrop pads, then crops at a uniform (i, j) in [0, 2 * PAD]; the flip comes after.
    """
    to_tensor = torchvision_transform(MEAN[:channels], STD[:channels], Augment(), (H, W))
    padded = TF.pad(pil(image), PAD)
    outcomes = {}
    for i in range(2 * PAD + 1):
        for j in range(2 * PAD + 1):
            crop = TF.crop(padded, i, j, H, W)
            for flip in (0, 1):
                out = to_tensor(TF.hflip(crop) if flip else crop)
                outcomes[out.numpy().tobytes()] = (i, j, flip)
    return outcomes


def decode(outputs: torch.Tensor, outcomes: dict) -> np.ndarray:
    """[N, 3] (row offset, col offset, flip) of each output; fails if one is not a torchvision output."""
    found = [outcomes.get(out.numpy().tobytes()) for out in outputs]
    assert None not in found, "an augmented image is not one torchvision's pipeline can produce"
    return np.array(found)


def counts(decoded: np.ndarray) -> np.ndarray:
    i, j, flip = decoded.T
    cells = (i * (2 * PAD + 1) + j) * 2 + flip
    return np.bincount(cells, minlength=(2 * PAD + 1) ** 2 * 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_flip_normalise_match_torchvision(channels):
    image = probe(channels)
    outcomes = reachable(image, channels)
    assert len(outcomes) == (2 * PAD + 1) ** 2 * 2  # all distinct, so decoding is unambiguous

    n = 98 * 100
    loader = DeviceLoader(image.expand(n, -1, -1, -1), torch.zeros(n, dtype=torch.int64), 4096,
                          MEAN[:channels], STD[:channels], Augment(PAD, flip=True))  # fmt: skip
    ours = decode(torch.cat([x for x, _ in loader.epoch(seed=0)]), outcomes)

    torch.manual_seed(0)
    transform = torchvision_transform(MEAN[:channels], STD[:channels], Augment(PAD, flip=True), (H, W))
    theirs = decode(torch.stack([transform(pil(image)) for _ in range(98 * 40)]), outcomes)

    # torchvision draws offsets and flips uniformly and independently; so must we, and like it does
    assert chisquare(counts(ours)).pvalue > 1e-3
    assert chisquare(np.bincount(ours[:, 2])).pvalue > 1e-3  # the flip rate alone, with more power
    for axis in (0, 1):
        assert chisquare(np.bincount(ours[:, axis])).pvalue > 1e-3
    assert chi2_contingency(np.stack([counts(ours), counts(theirs)])).pvalue > 1e-3


def test_no_augmentation_is_exactly_to_tensor_normalize():
    images = torch.randint(0, 256, (10, 3, H, W), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(10), 4, MEAN, STD)
    ours = torch.cat([x for x, _ in loader.epoch(seed=0, shuffle=False)])
    transform = torchvision_transform(MEAN, STD, Augment(), (H, W))
    assert torch.equal(ours, torch.stack([transform(pil(image)) for image in images]))


def test_epochs_are_seeded_permutations_in_batches():
    n, batch = 103, 16
    loader = DeviceLoader(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n), batch, (0.5,), (0.5,))
    batches = [y for _, y in loader.epoch(seed=7)]
    assert len(loader) == len(batches) == 7 and [len(b) for b in batches] == [16] * 6 + [7]
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(n))  # each sample exactly once
    assert torch.equal(order, torch.cat([y for _, y in loader.epoch(seed=7)]))  # same seed, same epoch
    assert not torch.equal(order, torch.cat([y for _, y in loader.epoch(seed=8)]))
    assert torch.equal(torch.cat([y for _, y in loader.epoch(seed=7, shuffle=False)]), torch.arange(n))


def test_channels_last_batches():
    loader = DeviceLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 4, MEAN, STD,
                          Augment(2, True), memory_format=torch.channels_last)  # fmt: skip
    x, _ = next(loader.epoch(seed=0))
    assert x.is_contiguous(memory_format=torch.channels_last)
