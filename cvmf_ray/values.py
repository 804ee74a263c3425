"""Value types the grid config and the methods' hyperparameters share, and the bounds behind them.

A module of its own, with no cvmf_ray import: `config` validates method parameters through `methods`, and
`methods` bounds them with these types, so neither may import the other (tests/test_imports.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_SEED = 2**32 - 1  # numpy's RandomState, and so sklearn's random_state, takes 0..2**32-1
MAX_COUNT = 2**31 - 1  # epochs, batch sizes, image counts: int32, which every torch size and derived seed fits
INT64 = (-(2**63), 2**63 - 1)  # the widest integer a torch tensor holds: the bound on a plug-in's own integers

# `Method.resolve_params` turns a value out of these ranges into a UsageError, as the config does its own
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]  # epochs, batch sizes, steps
Index = Annotated[int, Field(ge=0, le=MAX_COUNT)]  # class indices, paddings, step numbers
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # learning rates, temperatures, bounds
Finite = Annotated[float, Field(allow_inf_nan=False)]  # loss weights
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # weight decays
Fraction = Annotated[float, Field(ge=0, le=1)]  # shares and mixing weights (NaN fails the bounds)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
