"""MNIST, FashionMNIST, CIFAR-10/100 and SVHN, read by torchvision's own dataset classes.

Files live under the data root in torchvision's layout (`layout` below). `check` (the driver, before Ray
starts) lets torchvision download them when the network allows and otherwise names what is missing;
`load` (the trials) never downloads: concurrent downloads into one folder would race. `files` lists what
every file must be (cvmf_ray/datasets/files.py): the driver checks them all after `check`, and
`cvmf-ray data` reports them.

    cvmf-ray data --data-root ~/data                       # which datasets are there, and intact
    cvmf-ray data --data-root ~/data --prepare fashionmnist  # from Debian's dataset-fashion-mnist
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvmf_ray.datasets import DatasetSpec, register_dataset
from cvmf_ray.datasets.files import DataFile, idx, md5, md5sum, unpacked_from
from cvmf_ray.errors import UsageError
from cvmf_ray.lazy import torch

DOWNLOAD_TIMEOUT_S = 60  # per socket operation: behind a silent firewall `check` fails instead of hanging

# torchvision keeps images as [N, H, W] (MNIST family), [N, H, W, C] (CIFAR) or [N, C, H, W] (SVHN)
TO_NCHW: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NHW": lambda x: x[:, None],
    "NHWC": lambda x: x.permute(0, 3, 1, 2),
    "NCHW": lambda x: x,
}
TRAIN_TEST = ({"train": True}, {"train": False})
TORCHVISION_TABLE = "torchvision's table"

# md5 of the unpacked files of the original Fashion-MNIST release (Zalando publishes those of the .gz files,
# which torchvision's `resources` holds); Debian's dataset-fashion-mnist unpacks to the same bytes
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_RELEASE = "the original Fashion-MNIST release"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # `apt-get install dataset-fashion-mnist`


@dataclass(frozen=True)
class TorchvisionSource:
    """Where one torchvision dataset class finds its files under the data root, and how to get them."""

    name: str
    class_name: str  # in torchvision.datasets; imported on first use (importing torchvision costs ~1.5 s)
    subdir: str  # the root handed to the class, relative to the data root
    layout: str  # the files the class reads, relative to the data root (a str.format template over `cls`)
    how: str  # how to put them there by hand (a template over `cls` and `root`)
    images: str  # key of TO_NCHW
    listing: Callable[[type, DatasetSpec, Path], tuple[DataFile, ...]]  # every file read, with its checks
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

    def files(self, spec: DatasetSpec, root: Path) -> tuple[DataFile, ...]:
        return self.listing(self.cls, spec, root)

    def advice(self, root: Path) -> str:
        return (
            f"expected {root / self.layout.format(cls=self.cls)}; with network access cvmf-ray downloads it there, "
            f"else {self.how.format(cls=self.cls, root=root)} (or point --data-root elsewhere)"
        )

    def _open(self, root: Path, download: bool) -> list:
        try:
            return [self.cls(root / self.subdir, download=download, **split) for split in self.splits]
        except (RuntimeError, OSError):  # torchvision's "not found or corrupted", or a failed download
            raise UsageError(f"dataset {self.name!r} not found or corrupt: {self.advice(root)}") from None

    def _tensors(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        labels = ds.targets if hasattr(ds, "targets") else ds.labels
        images = TO_NCHW[self.images](torch.as_tensor(ds.data)).contiguous()
        return images, torch.as_tensor(labels, dtype=torch.int64)


def register(source: TorchvisionSource, **spec: Any) -> None:
    register_dataset(
        DatasetSpec(
            name=source.name, load=source.load, check=source.check, files=source.files, advice=source.advice, **spec
        )
    )


# --- what every file must be (see files.py for which check each one gets, and why) ------------------------


def idx_files(cls: type, spec: DatasetSpec, root: Path) -> tuple[DataFile, ...]:
    """The four IDX files: their structure always; md5 of the unpacked file if published, else via the .gz."""
    raw = root / cls.__name__ / "raw"
    published = FASHION_MNIST_MD5 if cls.__name__ == "FashionMNIST" else None
    archives = dict(cls.resources)  # {"train-images-idx3-ubyte.gz": md5 of the download}
    files = []
    for prefix, n in (("train", spec.train_size), ("t10k", spec.test_size)):
        for kind, shape, classes in (
            ("images-idx3", (n, spec.image_size, spec.image_size), None),
            ("labels-idx1", (n,), spec.num_classes),
        ):
            name = f"{prefix}-{kind}-ubyte"
            if published:
                content = md5(published[name], FASHION_MNIST_RELEASE)
            else:
                content = unpacked_from(raw / f"{name}.gz", archives[f"{name}.gz"], TORCHVISION_TABLE)
            files.append(DataFile(raw / name, (idx(shape, classes), content)))
    return tuple(files)


def cifar_files(cls: type, spec: DatasetSpec, root: Path) -> tuple[DataFile, ...]:
    """The pickled batches and the meta file, each with torchvision's md5."""
    folder = root / cls.base_folder
    listed = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return tuple(DataFile(folder / name, (md5(digest, TORCHVISION_TABLE),)) for name, digest in listed)


def svhn_files(cls: type, spec: DatasetSpec, root: Path) -> tuple[DataFile, ...]:
    """train_32x32.mat and test_32x32.mat, each with torchvision's md5."""
    listed = [cls.split_list[split][1:] for split in ("train", "test")]
    return tuple(DataFile(root / "svhn" / name, (md5(digest, TORCHVISION_TABLE),)) for name, digest in listed)


# --- Fashion-MNIST from Debian's package -------------------------------------------------------------------


def prepare_fashionmnist(root: Path) -> None:
    """Lay out Debian's Fashion-MNIST under `root` in torchvision's layout, each file's md5 verified.

    Each file is unpacked into a temporary file beside its target and renamed into place only once its
    md5 matches, so an interrupted run never leaves a partial file under the real name. Files already
    there with the right md5 are kept.
    """
    if not DEBIAN_FASHION_MNIST.is_dir():
        raise UsageError(
            f"Debian's Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST} does not exist): "
            "apt-get install dataset-fashion-mnist"
        )
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, digest in FASHION_MNIST_MD5.items():
        target = raw / name
        if not (target.is_file() and md5sum(target) == digest):
            _gunzip_verified(DEBIAN_FASHION_MNIST / f"{name}.gz", target, digest)


def _gunzip_verified(archive: Path, target: Path, digest: str) -> None:
    """Unpack `archive` to `target` atomically (temporary file + rename), if its contents have md5 `digest`."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
        temporary = Path(out.name)
        try:
            got = _copy_unpacked(archive, out)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            temporary.unlink()
            raise
    if got != digest:
        temporary.unlink()
        raise UsageError(
            f"{archive} unpacks to md5 {got}, not {FASHION_MNIST_RELEASE}'s {digest}: "
            "reinstall it (apt-get install --reinstall dataset-fashion-mnist)"
        )
    temporary.chmod(0o644)  # as the package's own files (a temporary file is created 0600)
    os.replace(temporary, target)


def _copy_unpacked(archive: Path, out) -> str:
    """Stream the unpacked bytes of `archive` into `out`; returns their md5."""
    md5_of = hashlib.md5()
    try:
        with gzip.open(archive, "rb") as f:
            while chunk := f.read(1 << 20):
                md5_of.update(chunk)
                out.write(chunk)
    except FileNotFoundError:
        raise UsageError(
            f"{archive} is missing: reinstall it (apt-get install --reinstall dataset-fashion-mnist)"
        ) from None
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"{archive} is not a valid gzip file ({err}): reinstall dataset-fashion-mnist") from None
    return md5_of.hexdigest()


# --- the datasets ------------------------------------------------------------------------------------------


def _idx_source(name: str, class_name: str, how: str = "gunzip the four *-ubyte.gz files from {cls.mirrors[0]} there"):
    return TorchvisionSource(
        name,
        class_name,
        subdir="",
        layout="{cls.__name__}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
        how=how,
        images="NHW",
        listing=idx_files,
    )


def _cifar_source(name: str, class_name: str, files: str) -> TorchvisionSource:
    layout = "{cls.base_folder}/" + files.replace("{", "{{").replace("}", "}}")
    return TorchvisionSource(
        name, class_name, subdir="", layout=layout, how="unpack {cls.url} there", images="NHWC", listing=cifar_files
    )


NO_FLIP = {"flip": False}  # a mirrored digit is no digit: the published recipe's flip is for objects and clothes

register(
    _idx_source("mnist", "MNIST"),
    num_classes=10, in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,),
    class_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949), test_size=10_000,
    train_recipe=NO_FLIP,
)  # fmt: skip
register(
    _idx_source(
        "fashionmnist", "FashionMNIST",
        how="gunzip the four *-ubyte.gz files from {cls.mirrors[0]} there, or with Debian's dataset-fashion-mnist "
        "installed run `cvmf-ray data --prepare fashionmnist --data-root {root}`",
    ),
    num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,),  # constants of the published recipe
    class_counts=10 * (6000,), test_size=10_000,
    prepare=prepare_fashionmnist,
    train_recipe={"grad_clip": 0.5},  # the published Fashion-MNIST recipe clips gradients (model card)
)  # fmt: skip
register(
    # the constants of the published recipe (Machine-Unlearning-Comparator, after kuangliu/pytorch-cifar);
    # the true per-pixel std of the training set is (0.247, 0.243, 0.261)
    _cifar_source("cifar10", "CIFAR10", "{data_batch_1..5,test_batch,batches.meta}"),
    num_classes=10, in_channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
    class_counts=10 * (5000,), test_size=10_000,
)  # fmt: skip
register(
    _cifar_source("cifar100", "CIFAR100", "{train,test,meta}"),
    num_classes=100, in_channels=3, image_size=32, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    class_counts=100 * (500,), test_size=10_000,
)  # fmt: skip
register(
    TorchvisionSource(
        "svhn", "SVHN", subdir="svhn", layout="svhn/{{train,test}}_32x32.mat",
        how="download {cls.split_list[train][0]} and {cls.split_list[test][0]} there", images="NCHW",
        listing=svhn_files, splits=({"split": "train"}, {"split": "test"}),
    ),
    num_classes=10, in_channels=3, image_size=32, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
    class_counts=(4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659), test_size=26_032,  # digit 0 first
    train_recipe=NO_FLIP,
)  # fmt: skip
