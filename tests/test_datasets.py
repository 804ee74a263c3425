"""The torchvision datasets through torchvision's real loading code and cvmf-ray's own file checks, on tiny
files written in each dataset's on-disk format, with the network switched off (nothing is downloaded, ever);
and the real Fashion-MNIST from Debian's package.

Checksums and sizes: the checks compare every file with what the real dataset must be (md5 digests of the
real files, 60,000 images, ...), which no tiny file can match. So the tests write their files, then put
*those files'* md5 digests into the tables the checks read (torchvision's class attributes,
`FASHION_MNIST_MD5`) and their sizes into the registered spec: data rather than code, restored after each
test. The verification code itself runs unchanged, and each test proves it is live: one flipped byte or a
missing file must fail. The real-data test needs no patching and checks the real digests.
"""

import dataclasses
import gzip
import hashlib
import pickle
import shutil
import socket
import struct

import numpy as np
import pytest
import scipy.io
import torch
from torchvision import datasets as tv

from cvmf_ray.datasets import DATASETS, torchvision_sets
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


def sized_like(monkeypatch, name: str, train_y: np.ndarray, n_test: int) -> None:
    """The registered spec of `name`, with the class sizes of the files the test wrote."""
    spec = DATASETS.get(name)
    counts = tuple(np.bincount(train_y, minlength=spec.num_classes).tolist())
    monkeypatch.setitem(DATASETS._entries, name, dataclasses.replace(spec, class_counts=counts, test_size=n_test))


# --- writers: each returns (expected train x, train y, test x, test y) and the file to break --------------


def write_idx(path, array: np.ndarray, magic: int | None = None) -> None:
    """IDX: magic (0, 0, 0x08 = unsigned byte, number of dimensions), big-endian sizes, then the bytes."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_family(root, name: str, monkeypatch):
    cls = {"mnist": tv.MNIST, "fashionmnist": tv.FashionMNIST}[name]
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    expected = []
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = images(n, 1, 28), rng.permutation(np.arange(n) % 10).astype(np.uint8)  # every class in train
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        expected += [x, y]
    sized_like(monkeypatch, name, expected[1], N_TEST)
    if name == "fashionmnist":  # the checksums of the files just written (see the module docstring)
        written = {name: md5(raw / name) for name in torchvision_sets.FASHION_MNIST_MD5}
        monkeypatch.setattr(torchvision_sets, "FASHION_MNIST_MD5", written)
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
    "mnist": lambda root, mp: write_mnist_family(root, "mnist", mp),
    "fashionmnist": lambda root, mp: write_mnist_family(root, "fashionmnist", mp),
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
    spec.check_available(tmp_path)  # files present and intact: no download attempted (the network is off)
    checks = spec.verify(tmp_path).summary()
    assert "md5 matches" in checks if name != "mnist" else MNIST_WITHOUT_DOWNLOADS in checks
    data = spec.load_data(tmp_path)

    for got, want in zip((data.train_x, data.train_y, data.test_x, data.test_y), expected, strict=True):
        assert torch.equal(got, torch.from_numpy(want).to(got.dtype))
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_x.shape[1:] == (spec.in_channels, spec.image_size, spec.image_size)
    assert data.train_x.is_contiguous()
    assert len(spec.mean) == len(spec.std) == spec.in_channels

    if name.startswith("cifar") or name == "svhn":
        corrupt(breakable)  # the checksum verification is live: torchvision's ...
        with pytest.raises(UsageError, match=name):
            spec.load_data(tmp_path)
        with pytest.raises(UsageError, match=f"damaged file {breakable}: md5 "):  # ... and the driver's, naming it
            spec.check_available(tmp_path)
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


def labels_one_short(raw) -> None:
    y = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    write_idx(raw / "train-labels-idx1-ubyte", y[:-1])  # a consistent file, one label short of its images


DEFECTS = {  # how to damage a freshly written dataset -> (the file named, what the message says)
    "wrong magic": (
        lambda raw: write_idx(raw / "t10k-images-idx3-ubyte", images(N_TEST, 1, 28)[:, 0], magic=2049),
        "t10k-images-idx3-ubyte",
        "magic number 2049, expected 2051 (IDX images: unsigned bytes, 3-D)",
    ),
    "truncated": (
        lambda raw: (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-9]),
        "train-images-idx3-ubyte",
        f"truncated: {16 + N_TRAIN * 784 - 9} bytes, expected {16 + N_TRAIN * 784}",
    ),
    "count mismatch": (labels_one_short, "train-labels-idx1-ubyte", f"holds {N_TRAIN - 1} labels, expected {N_TRAIN}"),
    "empty labels": (
        lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b""),
        "t10k-labels-idx1-ubyte",
        "is empty",
    ),
    "label out of range": (
        lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", np.full(N_TEST, 10, np.uint8)),
        "t10k-labels-idx1-ubyte",
        "holds label 10, expected 0..9",
    ),
}


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_damaged_idx_file_is_one_line_naming_it_exit_2(name, defect, tmp_path, monkeypatch, cli):
    """Before: an AssertionError ("internal error") inside torchvision's parser, or a silent mismatch."""
    WRITERS[name](tmp_path, monkeypatch)
    raw = tmp_path / {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name] / "raw"
    damage, file, message = DEFECTS[defect]
    damage(raw)
    line = f"dataset {name!r}: damaged file {raw / file}: {message}"

    code, out, err = cli("data", "--data-root", tmp_path)  # the report
    assert code == 2 and err == f"error: {line}\n"
    assert f"{name:13}damaged  {raw / file}: {message}" in out.splitlines()

    with pytest.raises(UsageError) as raised:  # the driver's check before anything runs
        DATASETS.get(name).check_available(tmp_path)
    assert str(raised.value) == line

    results = tmp_path / "results"
    code, out, err = cli("grid", "--datasets", name, "--data-root", tmp_path, "--results-dir", results)
    assert (code, err) == (2, f"error: {line}\n") and "Ray" not in out
    assert not results.exists()  # refused before Ray started or anything was written


def test_mnist_unpacked_files_are_checked_against_their_verified_downloads(tmp_path, monkeypatch):
    """MNIST publishes md5s of its .gz downloads only: with one beside a file, the file must be its contents."""
    write_mnist_family(tmp_path, "mnist", monkeypatch)
    raw = tmp_path / "MNIST" / "raw"
    resources = []
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        resources.append((f"{name}.gz", md5(raw / f"{name}.gz")))
    resources.append(("t10k-labels-idx1-ubyte.gz", "0" * 32))  # no .gz of this one is written
    monkeypatch.setattr(tv.MNIST, "resources", resources)
    spec = DATASETS.get("mnist")

    report = spec.verify(tmp_path)
    states = {state.path.name: state.passed for state in report.files}
    verified = "equal to their unpacked .gz downloads, whose md5 matches torchvision's table's"
    assert states["train-images-idx3-ubyte"] == (IDX_CHECKED, verified)
    assert states["t10k-labels-idx1-ubyte"] == (IDX_CHECKED, UNVERIFIED)
    assert report.summary() == f"4 files: {IDX_CHECKED}; 3 of 4: {verified}; 1 of 4: {UNVERIFIED}"

    pixels = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
    pixels[100] ^= 0x01  # one pixel: the structure still checks out, the contents do not
    (raw / "train-images-idx3-ubyte").write_bytes(bytes(pixels))
    with pytest.raises(UsageError, match="train-images-idx3-ubyte: differs from the contents of train-images"):
        spec.check_available(tmp_path)


IDX_CHECKED = "IDX header, count and size"
UNVERIFIED = "no md5 check (none is published for the unpacked files, and no .gz download lies beside them)"
MNIST_WITHOUT_DOWNLOADS = f"4 files: {IDX_CHECKED}; {UNVERIFIED}"


def test_the_data_report_says_each_dataset_in_one_clean_sentence(tmp_path, monkeypatch, cli):
    """Before: MNIST's per-file words were split at their own '; ' and run together, a fragment per file."""
    write_mnist_family(tmp_path, "mnist", monkeypatch)
    write_mnist_family(tmp_path, "fashionmnist", monkeypatch)
    code, out, err = cli("data", "--data-root", tmp_path)
    assert (code, err) == (0, "")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["mnist"] == f"{'mnist':13}{'present':9}{MNIST_WITHOUT_DOWNLOADS}"
    fashion = f"4 files: {IDX_CHECKED}; md5 matches the original Fashion-MNIST release's"
    assert lines["fashionmnist"] == f"{'fashionmnist':13}{'present':9}{fashion}"


def test_the_data_report_names_every_dataset(tmp_path, cli):
    code, out, err = cli("data", "--data-root", tmp_path)
    assert (code, err) == (0, "")
    states = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert states == {name: "present" if name == "digits" else "missing" for name in DATASETS.names()}
    assert f"expected {tmp_path}/FashionMNIST/raw/" in out and "--prepare fashionmnist" in out


def test_class_counts_are_the_data_s():
    """digits is embedded, so its static class sizes are checked here; Fashion-MNIST's in the real-data test."""
    spec = DATASETS.get("digits")
    data = spec.load_data("unused")
    assert tuple(torch.bincount(data.train_y).tolist()) == spec.class_counts
    assert len(data.test_y) == spec.test_size


# --- the real Fashion-MNIST (Debian's dataset-fashion-mnist; CI installs it) --------------------------------

real_fashion_mnist = pytest.mark.skipif(
    not torchvision_sets.DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"{torchvision_sets.DEBIAN_FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist (CI does)",
)


@real_fashion_mnist
def test_real_fashion_mnist_from_the_debian_package(tmp_path, cli):
    code, out, err = cli("data", "--data-root", tmp_path, "--prepare", "fashionmnist")
    assert (code, err) == (0, "")
    line = "fashionmnist present  4 files: IDX header, count and size; md5 matches the original Fashion-MNIST release's"
    assert line in out.splitlines()
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(torchvision_sets.FASHION_MNIST_MD5)  # no temporary left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in raw.iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert cli("data", "--data-root", tmp_path, "--prepare", "fashionmnist")[0] == 0
    assert mtimes == {p: p.stat().st_mtime_ns for p in raw.iterdir()}  # intact files are kept, not rewritten

    spec = DATASETS.get("fashionmnist")
    spec.check_available(tmp_path)  # torchvision finds them (the network is off), and they check out
    data = spec.load_data(tmp_path)  # through torchvision's FashionMNIST loader
    assert data.train_x.shape == (60_000, 1, 28, 28) and data.test_x.shape == (10_000, 1, 28, 28)
    assert tuple(torch.bincount(data.train_y).tolist()) == spec.class_counts  # the static sizes are the data's
    assert len(data.test_y) == spec.test_size

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "FashionMNIST", broken / "FashionMNIST")
    pixels = bytearray((broken / "FashionMNIST/raw/t10k-images-idx3-ubyte").read_bytes())
    pixels[-1] ^= 0x01  # one pixel of the last test image: only the md5 can tell
    (broken / "FashionMNIST/raw/t10k-images-idx3-ubyte").write_bytes(bytes(pixels))
    code, _, err = cli("data", "--data-root", broken)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"damaged file {broken}/FashionMNIST/raw/t10k-images-idx3-ubyte: md5 " in err
    assert "differs from the original Fashion-MNIST release's 8181f5470baa50b63fa0f6fddb340f0a" in err


def test_prepare_without_the_package_or_with_a_damaged_one(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    code, _, err = cli("data", "--data-root", tmp_path / "root", "--prepare", "fashionmnist")
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err and len(err.splitlines()) == 1

    package = tmp_path / "package"
    package.mkdir()
    for name in torchvision_sets.FASHION_MNIST_MD5:
        (package / f"{name}.gz").write_bytes(gzip.compress(b"not fashion-mnist"))
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST", package)
    code, _, err = cli("data", "--data-root", tmp_path / "root", "--prepare", "fashionmnist")
    assert code == 2 and f"{package}/train-images-idx3-ubyte.gz unpacks to md5 " in err
    assert not any((tmp_path / "root" / "FashionMNIST" / "raw").iterdir())  # nothing partial was left

    (package / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    code, _, err = cli("data", "--data-root", tmp_path / "root", "--prepare", "fashionmnist")
    assert code == 2 and "is not a valid gzip file" in err and len(err.splitlines()) == 1

    code, _, err = cli("data", "--prepare", "cifar10")
    assert code == 2 and "'cifar10' has no local package to lay out from (only: fashionmnist)" in err
