"""scikit-learn's bundled 8×8 handwritten digits: the embedded default (no download, 1,797 images).

Pixel values 0..16 are rescaled to uint8 0..255 so every dataset shares one uint8 → normalised path.
The 75/25 train/test split is stratified and fixed (seed 0), so every grid seed sees the same test set.

The published recipes are for 28-32 px images and thousands of images per class; 8×8 digits with ~135 per
class need their own: `TRAIN_RECIPE` and `METHOD_DEFAULTS` below (each method's docstring says why it
deviates), which the grid applies to `digits` only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvmf_ray.datasets import DatasetSpec, register_dataset
from cvmf_ray.lazy import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.25

# small_cnn reaches 100% train accuracy with it (tests/test_methods.py); no crop or flip (8 px leave nothing to
# crop, and a mirrored 2 is no 2); bf16 autocast where the CPU computes bf16 natively, 1.5x faster than fp32 on
# this project's CPUs (BENCHMARKS.md, the default grid's wall time). The digits studies (docs/studies.md) pin fp32 in
# their configs (`train: {bf16: false}`), the precision they were computed in.
TRAIN_RECIPE = {"epochs": 30, "batch_size": 64, "lr": 0.05, "crop_padding": 0, "flip": False, "bf16": True}
# what each method changes on digits, where an epoch is ~20x fewer steps than on CIFAR (see each docstring)
METHOD_DEFAULTS = {
    "finetune": {"batch_size": 16},
    "l1_sparse": {"epochs": 5, "lr": 0.1, "batch_size": 16},
    "gradient_ascent": {"batch_size": 64},
    "neggrad_plus": {"epochs": 3, "batch_size": 64, "alpha": 0.95},
    "random_label": {"lr": 0.01},
    "salun": {"epochs": 3, "lr": 0.01, "batch_size": 64},
    "boundary_shrink": {"lr": 5e-4, "bound": 0.3},
    "scrub": {"msteps": 1},
    "bad_teacher": {"epochs": 10, "lr": 1e-3},
    "unsir": {"batch_size": 32, "noise_batch": 32, "impair_lr": 0.005, "repair_lr": 0.0025},
    "ssd": {"alpha": 4.0, "batch_size": 1},
    "lfssd": {"alpha": 4.0, "batch_size": 1},
    "influence": {"alpha": 10.0},
    "cf_k": {"lr": 0.05, "batch_size": 8},
    "eu_k": {"batch_size": 8},
}


def _load(_root: Path):
    from sklearn.datasets import load_digits  # scikit-learn is imported where it is used (~1 s per process)
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    return (
        torch.from_numpy(train_x),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y).long(),
    )


register_dataset(
    DatasetSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=(0.3053,),  # measured on all 1,797 images after the uint8 rescale
        std=(0.3759,),
        class_counts=(133, 136, 133, 137, 136, 136, 136, 134, 131, 135),  # of the fixed split's 1,347 train images
        test_size=450,
        load=_load,
        train_recipe=TRAIN_RECIPE,
        method_defaults=METHOD_DEFAULTS,
    )
)
