"""One tiny registry class, timm-style: adding a model, dataset, method or quant mode is one decorated function.

>>> MODELS = Registry("model")
>>> @MODELS.register("small_cnn")
... def small_cnn(in_channels, num_classes): ...
>>> MODELS.get("small_cnn")
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from cvmf_ray.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; unknown names raise a `UsageError` listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
