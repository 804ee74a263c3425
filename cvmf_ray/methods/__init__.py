"""Unlearning-method registry. A method is one function plus a dataclass of its published defaults:

    @dataclass
    class FinetuneParams:
        epochs: int = 10
        lr: float = 0.01

    @register_method("finetune", FinetuneParams)
    def finetune(model, data: UnlearnData, params: FinetuneParams) -> nn.Module: ...

`original` (no unlearning) and `retrain` (trained without the forget set) are registered without a
function: the grid serves them from the train stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from torch import nn

from cvmf_ray.data import Augment, DeviceLoader
from cvmf_ray.errors import UsageError
from cvmf_ray.registry import Registry


@dataclass
class UnlearnData:
    """What a method sees: forget and retain training samples (uint8, on the device) and how to batch them."""

    forget_x: Any
    forget_y: Any
    retain_x: Any
    retain_y: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    device: Any
    seed: int

    def loader(self, which: str, batch_size: int, augment: bool = True) -> DeviceLoader:
        x, y = (self.forget_x, self.forget_y) if which == "forget" else (self.retain_x, self.retain_y)
        aug = self.augment if augment else Augment()
        return DeviceLoader(x, y, batch_size, self.mean, self.std, aug, self.device)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., nn.Module] | None  # None for `original` and `retrain`
    params: type | None = None  # a dataclass of hyperparameters with the published defaults

    def resolve_params(self, overrides: dict[str, Any], unlearn_epochs: int | None) -> dict[str, Any]:
        """Defaults < `--unlearn-epochs` < per-method overrides, type-checked; returns a plain dict."""
        if self.params is None:
            if overrides:
                raise UsageError(f"method {self.name!r} takes no parameters, got {sorted(overrides)}")
            return {}
        known = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(
                f"unknown parameter {unknown[0]!r} for method {self.name!r}; known: {', '.join(sorted(known))}"
            )
        values = dict(overrides)
        if unlearn_epochs is not None and "epochs" in known and "epochs" not in overrides:
            values["epochs"] = unlearn_epochs
        try:
            resolved = pydantic.TypeAdapter(self.params).validate_python(values)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"bad value for {self.name}.{field}: {first['msg']}") from None
        return dataclasses.asdict(resolved)


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, params: type | None = None) -> Callable:
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        METHODS.register(name)(Method(name, fn, params))
        return fn

    return add


def resolve_method(name: str) -> Method:
    """A registered method by name."""
    return METHODS.get(name)


METHODS.register("original")(Method("original", None))
METHODS.register("retrain")(Method("retrain", None))

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
