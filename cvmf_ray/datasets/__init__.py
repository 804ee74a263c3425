"""Dataset registry: every dataset is a `DatasetSpec` whose loader returns the whole set as uint8 tensors.

Normalisation constants and channel counts live here, with the dataset, so training, calibration and
evaluation all read the same numbers (the pipeline this replaces lost ~11 points of int8 accuracy by
calibrating on un-normalised images). So do the facts validation needs without loading anything (class
sizes, the files and what each must be) and what a dataset changes in the published recipes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvmf_ray.datasets.files import DataFile, FileState, inspect
from cvmf_ray.errors import UsageError
from cvmf_ray.lazy import torch
from cvmf_ray.registry import Registry


@dataclass(frozen=True)
class ImageData:
    """A whole dataset in memory: images uint8 [N, C, H, W], labels int64 [N]."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DataReport:
    """The state of one dataset's files under a data root, as `cvmf-ray data` prints it."""

    dataset: str
    files: list[FileState]
    advice: str  # where the files go and how to get them

    @property
    def state(self) -> str:
        states = {f.state for f in self.files}
        return "damaged" if "damaged" in states else "missing" if "missing" in states else "present"

    def summary(self) -> str:
        """What was checked (present), which file is missing and how to get it, or the defect (damaged)."""
        if not self.files:
            return "built in (no files)"
        if self.state == "damaged":
            bad = next(f for f in self.files if f.state == "damaged")
            return f"{bad.path}: {bad.detail}"
        if self.state == "missing":
            missing = [f.path for f in self.files if f.state == "missing"]
            if len(missing) == len(self.files):
                return self.advice
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            return f"incomplete, no {missing[0]}{more}: {self.advice}"
        return f"{len(self.files)} files: " + "; ".join(self._checks())

    def _checks(self) -> list[str]:
        """Each check's words once, in order; prefixed with how many files where not every file passed it."""
        counts = Counter(words for f in self.files for words in f.passed)
        n = len(self.files)
        return [words if k == n else f"{k} of {n}: {words}" for words, k in counts.items()]

    def defect(self) -> str:
        bad = next(f for f in self.files if f.state != "ok")
        what = "damaged file" if bad.state == "damaged" else "missing file"
        return f"dataset {self.dataset!r}: {what} {bad.path}" + (f": {bad.detail}" if bad.detail else "")


@dataclass(frozen=True)
class DatasetSpec:
    """What validation needs without loading anything, plus the loader itself."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_counts: tuple[int, ...]  # training images per class, as published: forget sets are checked from it
    test_size: int
    load: Callable[[Path], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    # check(root): the availability step, run by the driver before Ray starts: torchvision downloads what is
    # missing when the network allows, else a UsageError names the dataset, the expected layout and how to get it
    check: Callable[[Path], None] = lambda root: None
    # files(spec, root): every file `load` reads, with the checks it must pass (cvmf_ray/datasets/files.py)
    files: Callable[[DatasetSpec, Path], tuple[DataFile, ...]] = lambda spec, root: ()
    advice: Callable[[Path], str] = lambda root: ""  # where the files go under root and how to get them
    prepare: Callable[[Path], None] | None = None  # lays the files out from a local package (`cvmf-ray data`)
    # what this dataset changes in the published recipes (TrainRecipe fields; per method, its parameters):
    # the grid resolves built-in (published) < these < the user's values (cvmf_ray.config)
    train_recipe: Mapping[str, Any] = field(default_factory=dict)
    method_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def train_size(self) -> int:
        return sum(self.class_counts)

    def inspect(self, root: str | Path) -> DataReport:
        root = Path(root).expanduser()
        return DataReport(self.name, inspect(self.files(self, root)), self.advice(root))

    def verify(self, root: str | Path) -> DataReport:
        """Check every file; a missing or damaged one is a UsageError, one line naming the file and the defect."""
        report = self.inspect(root)
        if report.state != "present":
            raise UsageError(report.defect())
        return report

    def check_available(self, root: str | Path) -> None:
        """Present (downloaded if need be) and intact; called by the driver before Ray starts (bad data: exit 2)."""
        root = Path(root).expanduser()
        try:
            self.check(root)
        except Exception:  # torchvision's own parsers fail on a damaged file with AssertionError, KeyError, ...
            report = self.inspect(root)
            if report.state == "damaged":
                raise UsageError(report.defect()) from None
            raise
        self.verify(root)

    def load_data(self, root: str | Path) -> ImageData:
        train_x, train_y, test_x, test_y = self.load(Path(root).expanduser())
        return ImageData(self.name, train_x, train_y, test_x, test_y, self.num_classes, self.mean, self.std)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name)(spec)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
