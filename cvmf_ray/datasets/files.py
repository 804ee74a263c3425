"""What every dataset file must be, checked before anything runs and without torchvision.

torchvision only checks that the MNIST family's files exist; a damaged IDX file then fails deep inside
its parser (an AssertionError), and a labels file one short of its images loads silently. So every file a
grid will read is opened here and checked against what the dataset must be, and a defect is one line
naming the file. What a check verified is worded for any file that passes it, without naming one: `cvmf-ray
data` says it once for all of a dataset's files (`DataReport.summary`). Which check a file gets depends on what
is published for it:

- IDX files (MNIST, Fashion-MNIST): magic number, dimensions, sample count, exact size and labels
  within the classes, always; then the md5 of the unpacked file where one is published (Fashion-MNIST),
  else the md5 of torchvision's `.gz` download when it lies beside the file, with the file compared to
  its unpacked contents (MNIST publishes digests of the archives only).
- CIFAR-10/100 batches and SVHN `.mat` files: the md5 in torchvision's own tables (`train_list`,
  `test_list`, `meta`, `split_list`), which fixes size and content at once.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IDX_UNSIGNED_BYTE = 0x08  # the IDX type code of every MNIST-family file


class Damaged(Exception):
    """A file that is there but is not what the dataset needs; the message says how."""


Check = Callable[[Path], str]  # returns what it verified (the same words for every file it passes); raises Damaged


@dataclass(frozen=True)
class DataFile:
    path: Path
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class FileState:
    path: Path
    state: Literal["ok", "missing", "damaged"]
    detail: str = ""  # the defect (damaged)
    passed: tuple[str, ...] = ()  # what each check verified (ok)


def inspect(files: tuple[DataFile, ...]) -> list[FileState]:
    """Every check of every file; a file stops at its first defect (later checks assume the earlier ones)."""
    states = []
    for file in files:
        if not file.path.is_file():
            states.append(FileState(file.path, "missing"))
            continue
        try:
            passed = tuple(check(file.path) for check in file.checks)
        except Damaged as err:
            states.append(FileState(file.path, "damaged", str(err)))
        except OSError as err:  # unreadable: permissions, I/O error
            states.append(FileState(file.path, "damaged", f"cannot be read ({err.strerror or err})"))
        else:
            states.append(FileState(file.path, "ok", passed=passed))
    return states


def md5sum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def md5(digest: str, source: str) -> Check:
    """The file's md5 is `digest`, published by `source`."""

    def check(path: Path) -> str:
        got = md5sum(path)
        if got != digest:
            raise Damaged(f"md5 {got} differs from {source}'s {digest}")
        return f"md5 matches {source}'s"

    return check


def idx(shape: tuple[int, ...], classes: int | None = None) -> Check:
    """An IDX file of unsigned bytes with exactly this shape; for labels (`classes` given) every value below it."""
    magic = IDX_UNSIGNED_BYTE << 8 | len(shape)  # 2049 for labels (1 dimension), 2051 for images (3)
    header = 4 * (1 + len(shape))
    size = header + math.prod(shape)
    what = "labels" if classes is not None else "images"

    def check(path: Path) -> str:
        with open(path, "rb") as f:
            head = f.read(header)
            if not head:
                raise Damaged("is empty")
            got_magic = int.from_bytes(head[:4], "big")
            if len(head) >= 4 and got_magic != magic:
                raise Damaged(
                    f"magic number {got_magic}, expected {magic} (IDX {what}: unsigned bytes, {len(shape)}-D)"
                )
            if len(head) < header:
                raise Damaged(f"truncated inside its header ({len(head)} bytes)")
            got = struct.unpack(f">{len(shape)}I", head[4:])
            if got[0] != shape[0]:
                raise Damaged(f"holds {got[0]} {what}, expected {shape[0]}")
            if got != shape:
                raise Damaged(f"{what} of shape {got[1:]}, expected {shape[1:]}")
            actual = path.stat().st_size
            if actual != size:
                defect = "truncated" if actual < size else "has trailing bytes"
                raise Damaged(f"{defect}: {actual} bytes, expected {size}")
            if classes is not None:
                top = max(f.read(), default=0)
                if top >= classes:
                    raise Damaged(f"holds label {top}, expected 0..{classes - 1}")
        return "IDX header, count and size"

    return check


def unpacked_from(archive: Path, digest: str, source: str) -> Check:
    """The file equals the contents of `archive`, whose md5 `source` publishes; skipped when it is absent."""

    def check(path: Path) -> str:
        if not archive.is_file():
            return "no md5 check (none is published for the unpacked files, and no .gz download lies beside them)"
        if md5sum(archive) != digest:
            return f"no md5 check (the .gz downloads beside them differ from {source}'s, so they cannot vouch for them)"
        with gzip.open(archive, "rb") as f:
            unpacked = hashlib.file_digest(f, "md5").hexdigest()
        if unpacked != md5sum(path):
            raise Damaged(f"differs from the contents of {archive.name}, whose md5 matches {source}'s")
        return f"equal to their unpacked .gz downloads, whose md5 matches {source}'s"

    return check
