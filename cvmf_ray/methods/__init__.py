"""Unlearning-method registry. A method is one function plus a dataclass of its published defaults:

    @dataclass
    class FinetuneParams:
        epochs: int = 5
        lr: float = 0.1

    @register_method("finetune", FinetuneParams)
    def finetune(model, data: UnlearnData, params: FinetuneParams) -> nn.Module: ...

The function gets the original model (train mode, on the device), the forget and retain sets, and an
instance of its dataclass; it returns the unlearnt model with the same architecture (often the same
object). Methods run in train mode, as every reference implementation does: BatchNorm normalises with
batch statistics and its running statistics follow the batches seen, which for forget-only batches
(GA, Boundary Shrink/Expanding, SCRUB's max-step) is part of how those methods forget. The weight-only
methods (SSD, LFSSD, Fisher, IU, CF-k, EU-k) switch to eval mode, as their references do, and leave every
buffer as it was (`trains_bn=False`).

The dataclass defaults are the published values, which every real dataset gets. A dataset whose scale
they do not fit changes them in `DatasetSpec.method_defaults` (only `digits` does; each method's
docstring says why), and the user's values override both (`Method.resolve_params`).

A user's own method plugs in by dotted path, `--methods mypkg.mymod:my_unlearn`: a function written like
the built-in ones, whose hyperparameter dataclass is the type annotation of its third argument
(`params: MyParams`); without one it takes no hyperparameters and gets `params=None`. Overrides address
it by the same path (`method_params: {"mypkg.mymod:my_unlearn": {"lr": 0.1}}`). The module must be
importable wherever the cell runs (installed, or on PYTHONPATH of every Ray worker).

Each module also declares the search space of its own coefficients (`search_space`, next to the dataclass);
cvmf_ray/search_space.py adds the common ones (learning rate, weight decay, epochs, batch sizes) by field name.

`original` (no unlearning) and `retrain` (trained without the forget set) are registered without a
function: the grid serves them from the train stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydantic

from cvmf_ray.data import Augment, DeviceLoader
from cvmf_ray.datasets import DATASETS
from cvmf_ray.errors import UsageError
from cvmf_ray.lazy import nn
from cvmf_ray.meter import Meter
from cvmf_ray.registry import Registry, load_plugin
from cvmf_ray.values import INT64

# Left out of `resolve_params` at their defaults: the resolved dict is hashed into every unlearn cell's key, so a
# method keeps the keys, and the artifacts, it had before a field was added (as `TrainRecipe`'s LATER_FIELDS)
LATER_FIELDS = ("weight_decay",)  # issue 22: SGD's weight decay, fixed at its default before


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
    meter: Meter = dataclasses.field(default_factory=Meter)  # epochs and images, for the progress line
    last_block: tuple[str, ...] = ()  # parameter-name prefixes of the model's last block (`ModelInfo.last_block`)

    def epochs(self, total: int) -> Iterator[int]:
        """`range(total)` for a method's epoch loop, counted on the progress line (cvmf_ray/meter.py)."""
        return self.meter.epochs(total)

    def loader(self, which: str, batch_size: int, augment: bool = True) -> DeviceLoader:
        """Batches of the `forget` or `retain` set, augmented like training unless `augment=False`."""
        if which not in ("forget", "retain"):
            raise ValueError(f"loader() takes 'forget' or 'retain', not {which!r}")
        x, y = (self.forget_x, self.forget_y) if which == "forget" else (self.retain_x, self.retain_y)
        aug = self.augment if augment else Augment()
        return DeviceLoader(x, y, batch_size, self.mean, self.std, aug, self.device, meter=self.meter)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., nn.Module] | None  # None for `original` and `retrain`
    params: type | None = None  # a dataclass of hyperparameters with the published defaults
    # whether it runs BatchNorm in train mode, so its running statistics move: the BN-frozen control
    # (`--unlearn-bn frozen`) applies to it; weight-only methods compute in eval mode and say False
    trains_bn: bool = True
    needs_last_block: bool = False  # CF-k, EU-k: the grid refuses a model that declares no last block
    # {field: distribution, or None to keep a common one out of the search} (cvmf_ray/search_space.py)
    search_space: dict = dataclasses.field(default_factory=dict, hash=False)
    later_fields: tuple[str, ...] = ()  # built-in methods: LATER_FIELDS (a plug-in's fields are all its own)

    def resolve_params(self, overrides: dict[str, Any], unlearn_epochs: int | None, dataset: str) -> dict[str, Any]:
        """Published defaults < `dataset`'s own (`DatasetSpec.method_defaults`) < `--unlearn-epochs` < the
        user's `overrides`; type- and range-checked, every float finite and every integer within int64.
        Returns a plain dict: the cell records every resolved value."""
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
        values = dict(DATASETS.get(dataset).method_defaults.get(self.name, {}))
        if unlearn_epochs is not None and "epochs" in known:
            values["epochs"] = unlearn_epochs
        values.update(overrides)
        try:
            resolved = dataclasses.asdict(pydantic.TypeAdapter(self.params).validate_python(values))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"bad value {first['input']!r} for {self.name}.{field}: {first['msg']}") from None
        for field, value in resolved.items():  # what a plug-in's plain `float` and `int` fields do not bound
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"bad value {value!r} for {self.name}.{field}: must be a finite number")
            if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
                raise UsageError(f"bad value {value!r} for {self.name}.{field}: does not fit a 64-bit integer")
        defaults = {f.name: f.default for f in dataclasses.fields(self.params)}
        return {k: v for k, v in resolved.items() if k not in self.later_fields or v != defaults[k]}

    def every_value(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """Resolved `hparams` with the later fields `resolve_params` leaves out at their defaults put back: what a
        tuning study records and searches from."""
        return {} if self.params is None else dataclasses.asdict(self.instantiate(hparams))

    def instantiate(self, hparams: dict[str, Any]) -> Any:
        """The params object the function receives: its dataclass built from resolved `hparams`, or None."""
        return None if self.params is None else self.params(**hparams)


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str,
    params: type | None = None,
    *,
    trains_bn: bool = True,
    needs_last_block: bool = False,
    search_space: dict | None = None,
) -> Callable:
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        METHODS.register(name)(
            Method(name, fn, params, trains_bn, needs_last_block, dict(search_space or {}), LATER_FIELDS)
        )
        return fn

    return add


def resolve_method(name: str) -> Method:
    """A registered method by name, or a user's function by dotted path `package.module:function`."""
    if ":" not in name:
        return METHODS.get(name)
    fn = load_plugin(name, "method")
    return Method(name, fn, _params_type(name, fn))


def _params_type(name: str, fn: Callable) -> type | None:
    """The dataclass annotating the function's third parameter (`params`), or None when unannotated."""
    parameters = list(inspect.signature(fn).parameters.values())
    if len(parameters) < 3:
        raise UsageError(f"method {name!r} must take (model, data, params); it takes {len(parameters)} arguments")
    try:
        annotation = typing.get_type_hints(fn).get(parameters[2].name)
    except Exception as err:  # an annotation naming something the module does not define
        raise UsageError(f"cannot resolve the annotations of method {name!r}: {err}") from None
    if annotation is None:
        return None
    if not dataclasses.is_dataclass(annotation):
        raise UsageError(f"method {name!r}: its params annotation {annotation!r} is not a dataclass")
    return annotation


METHODS.register("original")(Method("original", None))
METHODS.register("retrain")(Method("retrain", None))

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
