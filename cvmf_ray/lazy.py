"""torch for the modules the driver imports, imported on first use.

The driver imports every registry entry (models, datasets, methods, quant modes) to validate a grid and expand
it: names, parameter dataclasses, dataset facts, weight bits. Only trials run their code. Importing torch would
cost the driver 1.3 s of CPU before Ray can start, so an entry module takes torch from here and must not touch
it at import time (no torch class as a base class, no torch call in a decorator or a module constant):

    from cvmf_ray.lazy import F, nn, torch

tests/test_grid.py checks that validating and expanding a grid of every registered entry imports no torch. The
driver still imports it where a check needs torch itself: a torchvision dataset's file check (torchvision's
parsers), forget fractions (the unlearn stage's own draw), `--gpus N` (the count torch sees).
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module `name`: the first attribute read imports it, and every read or write is one of the
    module itself (so a test's monkeypatch of the module is seen here, and one through here reaches it)."""

    def __init__(self, name: str) -> None:
        self.__dict__.update(_name=name, _module=None)

    def _load(self):
        if self._module is None:
            self.__dict__["_module"] = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        if attribute in ("_name", "_module"):  # before __init__ ran (copy, pickle): not the module's to answer
            raise AttributeError(attribute)
        return getattr(self._load(), attribute)

    def __setattr__(self, attribute: str, value: Any) -> None:
        setattr(self._load(), attribute, value)

    def __reduce__(self):
        return LazyModule, (self._name,)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
