"""Real Fashion-MNIST for the benchmark scripts, from the Debian package `dataset-fashion-mnist`.

`fashion_mnist(root)` loads `<root>/FashionMNIST/raw/*` (torchvision's layout) through the project's own
dataset registry; without `root`, it gunzips /usr/share/datasets/fashion-mnist/*.gz into a temporary folder
in that layout first (reference/real-data.md: the unpacked files are byte-identical to the originals).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from cvmf_ray.datasets import DATASETS, ImageData

DEBIAN_FILES = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(root: str | None) -> ImageData:
    if root is not None:
        return DATASETS.get("fashionmnist").load_data(root)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "FashionMNIST", "raw")
        raw.mkdir(parents=True)
        packed = sorted(DEBIAN_FILES.glob("*-ubyte.gz"))
        if len(packed) != 4:
            raise SystemExit(f"need the 4 files of `apt-get install dataset-fashion-mnist` in {DEBIAN_FILES}")
        for path in packed:
            with gzip.open(path) as src, open(raw / path.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return DATASETS.get("fashionmnist").load_data(tmp)
