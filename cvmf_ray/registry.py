"""One tiny registry class, timm-style: adding a model, dataset, method or quant mode is one decorated function.

>>> MODELS = Registry("model")
>>> @MODELS.register("small_cnn")
... def small_cnn(in_channels, num_classes): ...
>>> MODELS.get("small_cnn")
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from cvmf_ray.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; unknown names raise a `UsageError` listing the valid ones."""

    def __init__(self, kind: str, plugins: bool = False) -> None:
        self.kind, self.plugins = kind, plugins
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry registered as `name`; for models, also a user's function by dotted path `pkg.mod:function`."""
        if ":" in name and self.plugins:
            return load_plugin(name, self.kind)
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def load_plugin(name: str, kind: str) -> Callable:
    """The function a dotted path `package.module:function` names. Importing user code can end nothing: a
    `sys.exit` or any other exception at import is one UsageError naming the module (Ctrl-C still interrupts)."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr.isidentifier():
        raise UsageError(f"{kind} {name!r} is not a dotted path of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:  # Ctrl-C during a slow import still interrupts
        raise
    except SystemExit as err:  # user code must not end the grid, least of all with "success"
        raise UsageError(
            f"cannot import module {module_name!r} for {kind} {name!r}: it calls sys.exit({err.code!r}) on import"
        ) from None
    except BaseException as err:  # any other failure while importing user code is the user's input to fix
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"cannot import module {module_name!r} for {kind} {name!r}: {reason}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        what = "has no attribute" if fn is None else "has a non-callable"
        raise UsageError(f"module {module_name!r} {what} {attr!r}; {kind} {name!r} needs a function")
    return fn
