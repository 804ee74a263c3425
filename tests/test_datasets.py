"""The torchvision datasets through torchvision's real loading code, on tiny files written in each
dataset's own on-disk format, with the network switched off (nothing is downloaded, ever).

Checksums: torchvision verifies the md5 of every CIFAR batch and SVHN .mat file against the digests of
the real 170 MB archives, which no test can produce without shipping the data. So the tests write their
files, then put *those files'* md5 digests into torchvision's expected-checksum tables (class attributes,
data rather than code; restored after each test). The verification code itself runs unchanged, and each
test proves it is live: one flipped byte in a written file makes loading fail. The MNIST family has no
checksums on its unpacked files; there a missing file must fail.
"""

import hashlib
import pickle
import socket
import struct

import numpy as np
import pytest
import scipy.io
import torch
from torchvision import datasets as tv

from cvmf_ray.datasets import DATASETS
from cvmf_ray.errors import UsageError

N_TRAIN, N_TEST = 12, 5
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every connection attempt fails, as on a machine without network access."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)


def images(n: int, channels: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --- writers: each returns (expected train x, train y, test x, test y) and the file to break --------------


def write_idx(path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, 0x08 = unsigned byte, number of dimensions), big-endian sizes, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_family(root, folder: str, monkeypatch):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    expected = []
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = images(n, 1, 28), rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        expected += [x, y]
    return expected, raw / "t10k-labels-idx1-ubyte"


def write_cifar(root, cls, label_key: str, names_key: str, num_classes: int, monkeypatch):
    """Pickled dicts: "data" is [n, 3072] uint8 (the red plane, then green, then blue), labels a list."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    expected = []
    for files, n in ((cls.train_list, N_TRAIN), (cls.test_list, N_TEST)):
        x, y = images(n, 3, 32), rng.integers(0, num_classes, n)
        for (name, _), part in zip(files, np.array_split(np.arange(n), len(files)), strict=True):
            batch = {"data": x[part].reshape(len(part), -1), label_key: y[part].tolist()}
            (folder / name).write_bytes(pickle.dumps(batch))
        expected += [x, y]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({names_key: [f"c{i}" for i in range(num_classes)]}))
    # the checksums of the files just written (see the module docstring)
    monkeypatch.setattr(cls, "train_list", [[name, md5(folder / name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5(folder / name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    return expected, folder / cls.train_list[-1][0]


def write_svhn(root, monkeypatch):
    """.mat files: X is [32, 32, 3, n] (rows, columns, channel, image), y is [n, 1] with 10 for the digit 0."""
    folder = root / "svhn"
    folder.mkdir()
    expected, split_list = [], dict(tv.SVHN.split_list)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = images(n, 3, 32), np.arange(n) % 10
        url, filename, _ = split_list[split]
        scipy.io.savemat(folder / filename, {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]})
        split_list[split] = [url, filename, md5(folder / filename)]
        expected += [x, y]
    monkeypatch.setattr(tv.SVHN, "split_list", split_list)
    return expected, folder / "test_32x32.mat"


WRITERS = {
    "mnist": lambda root, mp: write_mnist_family(root, "MNIST", mp),
    "fashionmnist": lambda root, mp: write_mnist_family(root, "FashionMNIST", mp),
    "cifar10": lambda root, mp: write_cifar(root, tv.CIFAR10, "labels", "label_names", 10, mp),
    "cifar100": lambda root, mp: write_cifar(root, tv.CIFAR100, "fine_labels", "fine_label_names", 100, mp),
    "svhn": write_svhn,
}


def test_every_torchvision_dataset_is_covered():
    assert sorted(WRITERS) == sorted(set(DATASETS.names()) - {"digits"})


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_loads_through_torchvision(name, tmp_path, monkeypatch):
    expected, breakable = WRITERS[name](tmp_path, monkeypatch)
    spec = DATASETS.get(name)
    spec.check_available(tmp_path)  # files present: no download attempted (the network is off)
    data = spec.load_data(tmp_path)

    for got, want in zip((data.train_x, data.train_y, data.test_x, data.test_y), expected, strict=True):
        assert torch.equal(got, torch.from_numpy(want).to(got.dtype))
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_x.shape[1:] == (spec.in_channels, spec.image_size, spec.image_size)
    assert data.train_x.is_contiguous()
    assert len(spec.mean) == len(spec.std) == spec.in_channels

    if name.startswith("cifar") or name == "svhn":
        corrupt(breakable)  # the checksum verification is live
    else:
        breakable.unlink()
    with pytest.raises(UsageError, match=name):
        spec.load_data(tmp_path)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_data_is_one_clear_line(name, tmp_path):
    spec = DATASETS.get(name)
    with pytest.raises(UsageError) as err:
        spec.check_available(tmp_path / "empty")  # tries to download, and cannot
    message = str(err.value)
    assert "\n" not in message
    assert f"dataset {name!r}" in message and "--data-root" in message
    assert str(tmp_path / "empty") in message  # where the files were expected ...
    assert "http" in message  # ... and where to get them
