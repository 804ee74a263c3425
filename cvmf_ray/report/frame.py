"""The results table as a pandas DataFrame in the report's order, and the run's identity.

Order is part of the answer: methods as the grid listed them (else as they first appear), quant modes
by bits per stored weight, widest first (fp32, 16-bit, 8-bit, 4-bit; equal widths by name; modes of
unknown width last, by name), so no table or figure ever reads bf16 before fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.schema import IDENTITY_COLUMNS, RUN_METADATA, quant_order

GROUP = ["model", "dataset", "method", "quant"]  # one aggregated row per group, over seeds x forget sets
NOT_METRICS = {*IDENTITY_COLUMNS, "method_params", "forget", "compare_key", "quant_update_per_layer"}


def weight_bits(quants) -> dict[str, float]:
    """Bits per stored weight of each quant mode, from the quant registry (NaN for a mode it does not know)."""
    return {q: QUANT_MODES.get(q).weight_bits if q in QUANT_MODES else np.nan for q in quants}


def run_info(table: pa.Table) -> dict:
    """The run's identity from the Parquet metadata (`cvmf_ray.run`); {} for runs written before it existed."""
    raw = (table.schema.metadata or {}).get(RUN_METADATA)
    return json.loads(raw) if raw else {}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Rows in report order: `method`/`quant` ordered categoricals, a `weight_bits` and a `forget` label column."""
    frame = table.to_pandas()
    grid_methods = (run_info(table).get("grid") or {}).get("methods", [])
    frame["method"] = pd.Categorical(frame["method"], list(dict.fromkeys([*grid_methods, *frame["method"]])), True)
    recorded = (
        frame.groupby("quant")["weight_bits"].first().dropna() if "weight_bits" in frame else pd.Series(dtype=float)
    )
    missing = [q for q in frame["quant"].unique() if q not in recorded.index]
    bits = {**recorded.astype(float).to_dict(), **(weight_bits(missing) if missing else {})}
    frame["quant"] = pd.Categorical(frame["quant"], quant_order(bits), ordered=True)
    frame["weight_bits"] = frame["quant"].astype(str).map(bits).astype(float)
    frame["forget"] = [
        _forget_label(c, f) for c, f in zip(frame["forget_class"], frame["forget_fraction"], strict=True)
    ]
    order = ["model", "dataset", "seed", "forget_class", "forget_fraction", "method", "quant"]
    return frame.sort_values(order, kind="stable", ignore_index=True)


def _forget_label(forget_class, forget_fraction) -> str:
    if pd.notna(forget_class):
        return f"class {int(forget_class)}"
    return f"{forget_fraction:.0%} random" if pd.notna(forget_fraction) else "-"


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric column that is a measurement (new metric columns are picked up without a code change)."""
    return [c for c in frame.columns if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(frame[c])]
