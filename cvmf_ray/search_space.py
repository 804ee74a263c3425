"""What a tuning study searches for one unlearning method: its hyperparameters' distributions, as plain data.

A space maps a parameter to one distribution, JSON that goes into cell keys:

    {"loguniform": [lo, hi]}   floats, 0 < lo < hi
    {"uniform": [lo, hi]}      floats, lo < hi
    {"int": [lo, hi]}          integers, lo <= hi, both ends included
    {"choice": [v1, v2, ...]}  one of the values, none repeated

DeepUnlearn's ranges (Cadet et al. 2024, `xcadet/deepunlearn` `munl/settings.py`) are the default family. The
common parameters come from field names (`COMMON`, and `epochs` up to 20% of the original's training epochs); each
method module declares its own coefficients next to its defaults (`Method.search_space`), and a user overrides
either per parameter from YAML (`tune: spaces: METHOD: {param: distribution, or null to keep it out}`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cvmf_ray.errors import UsageError
from cvmf_ray.methods import Method

Space = dict[str, dict[str, list]]

KINDS = ("loguniform", "uniform", "int", "choice")
COMMON: Space = {  # DeepUnlearn's, for any method with a field of the name
    "lr": {"loguniform": [1e-5, 1e-1]},
    "weight_decay": {"loguniform": [1e-5, 1e-1]},
    "batch_size": {"choice": [64, 128, 256]},
    "forget_batch_size": {"choice": [64, 128, 256]},
}
EPOCH_SHARE = 5  # epochs up to 1/5 of the original's training epochs, rounded up (DeepUnlearn's 20%)


def method_space(method: Method, train_epochs: int, overrides: dict | None = None, where: str = "tune.spaces") -> Space:
    """The space a study searches: derived common params + the method's declared ones, then `overrides` (the user's
    YAML `tune: spaces: METHOD: {param: dist-or-null}`) replacing per parameter; null removes a parameter from the
    search (it stays at its resolved value). Every distribution is checked, its bounds and choices through
    `method.resolve_params`, so a study never samples a value the method refuses: a UsageError says
    `{where}: {method}.{param}: ...` and the bad value on one line."""
    if method.params is None:
        raise UsageError(f"{where}: method {method.name!r} has no hyperparameters to tune")
    fields = [f.name for f in dataclasses.fields(method.params)]
    space: dict[str, Any] = {name: dist for name, dist in COMMON.items() if name in fields}
    if "epochs" in fields:
        space["epochs"] = {"int": [1, max(1, -(-train_epochs // EPOCH_SHARE))]}
    space.update(method.search_space)
    for name, dist in (overrides or {}).items():
        if name not in fields:
            raise UsageError(f"{where}: {method.name}.{name}: no such parameter; known: {', '.join(fields)}")
        space[name] = dist
    checked = {name: _checked(method, name, dist, where) for name, dist in space.items() if dist is not None}
    if not checked:
        raise UsageError(f"{where}: nothing left to search for method {method.name!r}: every parameter is removed")
    return checked


def tune_domains(space: Space) -> dict:
    """The same space as Ray Tune domains, what `ray.tune.search.optuna.OptunaSearch(space=...)` converts to
    Optuna's distributions (`randint`'s upper end is exclusive, Optuna's inclusive: Ray subtracts the 1 back)."""
    from ray import tune  # Ray only where a study is set up

    def domain(dist: dict[str, list]):
        ((kind, values),) = dist.items()
        if kind == "choice":
            return tune.choice(values)
        if kind == "int":
            return tune.randint(values[0], values[1] + 1)
        return (tune.loguniform if kind == "loguniform" else tune.uniform)(*values)

    return {name: domain(dist) for name, dist in space.items()}


def _checked(method: Method, name: str, dist: Any, where: str) -> dict[str, list]:
    """`dist` validated and normalised (numeric strings, which YAML 1.1 gives for `1e-5`, become numbers)."""
    at = f"{where}: {method.name}.{name}"
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in KINDS:
        raise UsageError(f"{at}: {dist!r} is not null or one of {', '.join(f'{{{k}: [...]}}' for k in KINDS)}")
    ((kind, values),) = dist.items()
    if not isinstance(values, list | tuple):
        raise UsageError(f"{at}: {kind} takes a list, not {values!r}")
    if kind == "choice":
        return {kind: _choices(method, name, list(values), where)}
    if len(values) != 2:
        raise UsageError(f"{at}: {kind} takes [low, high], not {values!r}")
    lo, hi = (_number(v, kind, at) for v in values)
    if kind == "loguniform" and lo <= 0:
        raise UsageError(f"{at}: loguniform needs a low bound > 0, not {values!r}")
    if not (lo <= hi if kind == "int" else lo < hi):
        raise UsageError(f"{at}: {kind} needs low {'<=' if kind == 'int' else '<'} high, not {values!r}")
    if kind != "int" and isinstance(_resolved(method, name, lo, where), int):
        raise UsageError(f"{at}: takes integers, which {kind} {values!r} does not sample; use int or choice")
    _resolved(method, name, hi, where)
    return {kind: [lo, hi]}


def _choices(method: Method, name: str, values: list, where: str) -> list:
    if not values:
        raise UsageError(f"{where}: {method.name}.{name}: choice needs at least one value, not {values!r}")
    resolved = [_resolved(method, name, v, where) for v in values]
    repeated = [v for i, v in enumerate(resolved) if v in resolved[:i]]
    if repeated:
        raise UsageError(f"{where}: {method.name}.{name}: choice repeats {repeated[0]!r} in {values!r}")
    return resolved


def _number(value: Any, kind: str, at: str) -> float | int:
    """A finite bound: a float, or for `int` an integer (from an integral float or numeric string too), so that
    equal spaces are equal JSON, and so equal cell keys."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{at}: bound {value!r} of {kind} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{at}: bound {value!r} of {kind} is not a finite number")
    if kind != "int":
        return float(value)
    if not float(value).is_integer():
        raise UsageError(f"{at}: bound {value!r} of int is not an integer")
    return int(value)


def _resolved(method: Method, name: str, value: Any, where: str) -> Any:
    """`value` as the method's field type converts it, or a UsageError naming method.param. The user's value wins
    over any dataset's, so the embedded dataset stands for all."""
    try:
        return getattr(method.instantiate(method.resolve_params({name: value}, None, "digits")), name)
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
