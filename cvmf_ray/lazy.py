"""torch for the modules the driver imports, imported on first use.

The driver imports every registry entry (models, datasets, methods, quant modes) to validate a grid and expand
it: names, parameter dataclasses, dataset facts. Only trials run their code. Importing torch costs the driver
1.3 s of CPU before Ray can start, so an entry module takes torch from here and must not touch it at import
time (no torch class as a base class, no torch call in a decorator or a module constant):

    from cvmf_ray.lazy import F, nn, torch

tests/test_grid.py checks that validating and expanding a grid of every registered entry imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module `name`: the first attribute read imports it, and every read is a read of the module
    itself (so a test's monkeypatch of the module is seen here too)."""

    def __init__(self, name: str) -> None:
        self.__dict__.update(_name=name, _module=None)

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self.__dict__["_module"] = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
