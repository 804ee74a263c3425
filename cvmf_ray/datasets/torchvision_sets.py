"""MNIST, FashionMNIST, CIFAR-10/100 and SVHN, read by torchvision's own dataset classes.

Files live under the data root in torchvision's layout (`layout` below). `check` (the driver, before Ray
starts) lets torchvision download them when the network allows and otherwise names what is missing;
`load` (the trials) never downloads: concurrent downloads into one folder would race.

    python -c "from cvmf_ray.datasets import DATASETS; DATASETS.get('cifar10').check_available('~/data')"
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvmf_ray.datasets import DatasetSpec, register_dataset
from cvmf_ray.errors import UsageError

DOWNLOAD_TIMEOUT_S = 60  # per socket operation: behind a silent firewall `check` fails instead of hanging

# torchvision keeps images as [N, H, W] (MNIST family), [N, H, W, C] (CIFAR) or [N, C, H, W] (SVHN)
TO_NCHW: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NHW": lambda x: x[:, None],
    "NHWC": lambda x: x.permute(0, 3, 1, 2),
    "NCHW": lambda x: x,
}
TRAIN_TEST = ({"train": True}, {"train": False})


@dataclass(frozen=True)
class TorchvisionSource:
    """Where one torchvision dataset class finds its files under the data root, and how to get them."""

    name: str
    class_name: str  # in torchvision.datasets; imported on first use (importing torchvision costs ~1.5 s)
    subdir: str  # the root handed to the class, relative to the data root
    layout: str  # the files the class reads, relative to the data root (a str.format template over `cls`)
    how: str  # how to obtain them by hand (a template too)
    images: str  # key of TO_NCHW
    splits: tuple[dict[str, Any], dict[str, Any]] = TRAIN_TEST  # constructor kwargs for (train, test)

    @property
    def cls(self) -> type:
        from torchvision import datasets

        return getattr(datasets, self.class_name)

    def check(self, root: Path) -> None:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            self._open(root, download=True)
        finally:
            socket.setdefaulttimeout(previous)

    def load(self, root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        train, test = self._open(root, download=False)
        return (*self._tensors(train), *self._tensors(test))

    def _open(self, root: Path, download: bool) -> list:
        try:
            return [self.cls(root / self.subdir, download=download, **split) for split in self.splits]
        except (RuntimeError, OSError):  # torchvision's "not found or corrupted", or a failed download
            raise UsageError(
                f"dataset {self.name!r} not found or corrupt: expected {root / self.layout.format(cls=self.cls)}; with "
                f"network access cvmf-ray downloads it there, else {self.how.format(cls=self.cls)} there "
                "(or point --data-root elsewhere)"
            ) from None

    def _tensors(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        labels = ds.targets if hasattr(ds, "targets") else ds.labels
        images = TO_NCHW[self.images](torch.as_tensor(ds.data)).contiguous()
        return images, torch.as_tensor(labels, dtype=torch.int64)


def register(source: TorchvisionSource, **spec: Any) -> None:
    register_dataset(DatasetSpec(name=source.name, load=source.load, check=source.check, **spec))


def _idx_source(name: str, class_name: str) -> TorchvisionSource:
    return TorchvisionSource(
        name,
        class_name,
        subdir="",
        layout="{cls.__name__}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
        how="gunzip the four *-ubyte.gz files from {cls.mirrors[0]}",
        images="NHW",
    )


def _cifar_source(name: str, class_name: str, files: str) -> TorchvisionSource:
    layout = "{cls.base_folder}/" + files.replace("{", "{{").replace("}", "}}")
    return TorchvisionSource(name, class_name, subdir="", layout=layout, how="unpack {cls.url}", images="NHWC")


register(
    _idx_source("mnist", "MNIST"),
    num_classes=10, in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,),
)  # fmt: skip
register(
    _idx_source("fashionmnist", "FashionMNIST"),  # constants of the published recipe
    num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,),
)  # fmt: skip
register(
    # the constants of the published recipe (Machine-Unlearning-Comparator, after kuangliu/pytorch-cifar);
    # the true per-pixel std of the training set is (0.247, 0.243, 0.261)
    _cifar_source("cifar10", "CIFAR10", "{data_batch_1..5,test_batch,batches.meta}"),
    num_classes=10, in_channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
)  # fmt: skip
register(
    _cifar_source("cifar100", "CIFAR100", "{train,test,meta}"),
    num_classes=100, in_channels=3, image_size=32, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
)  # fmt: skip
register(
    TorchvisionSource(
        "svhn", "SVHN", subdir="svhn", layout="svhn/{{train,test}}_32x32.mat",
        how="download {cls.split_list[train][0]} and {cls.split_list[test][0]}", images="NCHW",
        splits=({"split": "train"}, {"split": "test"}),
    ),
    num_classes=10, in_channels=3, image_size=32, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
)  # fmt: skip
