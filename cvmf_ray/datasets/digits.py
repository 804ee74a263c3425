"""scikit-learn's bundled 8×8 handwritten digits: the embedded default (no download, 1,797 images).

Pixel values 0..16 are rescaled to uint8 0..255 so every dataset shares one uint8 → normalised path.
The 75/25 train/test split is stratified and fixed (seed 0), so every grid seed sees the same test set.
"""

from pathlib import Path

import numpy as np
import torch

from cvmf_ray.datasets import DatasetSpec, register_dataset

SPLIT_SEED = 0
TEST_FRACTION = 0.25


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
        load=_load,
    )
)
