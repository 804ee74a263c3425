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

from cvmf_ray.config import BN_SOURCES
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.schema import IDENTITY_COLUMNS, RUN_METADATA, quant_order

GROUP = ["model", "dataset", "method", "quant"]  # one aggregated row per group, over seeds x forget sets
NOT_METRICS = {*IDENTITY_COLUMNS, "method_params", "forget", "compare_key", "quant_update_per_layer", "quant_mode",
               "bn_reestimate_batches", "bn_reestimate_batch_size"}  # fmt: skip
FROZEN = " (BN frozen)"  # the label suffix of a method's BN-frozen control


def weight_bits(quants) -> dict[str, float]:
    """Bits per stored weight of each quant mode, from the quant registry (NaN for a mode it does not know)."""
    return {q: QUANT_MODES.get(q).weight_bits if q in QUANT_MODES else np.nan for q in quants}


def run_info(table: pa.Table) -> dict:
    """The run's identity from the Parquet metadata (`cvmf_ray.run`); {} for runs written before it existed."""
    raw = (table.schema.metadata or {}).get(RUN_METADATA)
    return json.loads(raw) if raw else {}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Rows in report order: `method`/`quant` ordered categoricals, a `weight_bits` and a `forget` label column.

    The BatchNorm axes fold into the two the report groups by, so no statistic ever pools them: `method` names
    the treatment ("gradient_ascent (BN frozen)" beside "gradient_ascent"), `quant` the deployment ("int8 + BN
    re-est. train" beside "int8"); the plain columns `unlearn_bn`, `quant_mode` and `bn_reestimate` stay."""
    frame = table.to_pandas()
    frame["bn_reestimate"] = frame.get("bn_reestimate", pd.Series(index=frame.index, dtype=object)).fillna("none")
    frame["unlearn_bn"] = frame.get("unlearn_bn", pd.Series(index=frame.index, dtype=object))  # older tables lack them
    grid_methods = (run_info(table).get("grid") or {}).get("methods", [])
    frozen = frame["unlearn_bn"] == "frozen"
    frame["method"] = frame["method"].where(~frozen, frame["method"] + FROZEN)
    methods = [label for m in dict.fromkeys([*grid_methods, *frame["method"]]) for label in (m, m + FROZEN)]
    present = set(frame["method"])
    frame["method"] = pd.Categorical(frame["method"], [m for m in dict.fromkeys(methods) if m in present], ordered=True)
    recorded = (
        frame.groupby("quant")["weight_bits"].first().dropna() if "weight_bits" in frame else pd.Series(dtype=float)
    )
    missing = [q for q in frame["quant"].unique() if q not in recorded.index]
    bits = {**recorded.astype(float).to_dict(), **(weight_bits(missing) if missing else {})}
    frame["quant_mode"] = frame["quant"]
    frame["quant"] = [deployment(q, step) for q, step in zip(frame["quant"], frame["bn_reestimate"], strict=True)]
    order = [deployment(q, step) for q in quant_order(bits) for step in BN_SOURCES]
    present = set(frame["quant"])
    frame["quant"] = pd.Categorical(frame["quant"], [d for d in order if d in present], ordered=True)
    frame["weight_bits"] = frame["quant_mode"].map(bits).astype(float)
    frame["forget"] = [forget_label(c, f) for c, f in zip(frame["forget_class"], frame["forget_fraction"], strict=True)]
    order = ["model", "dataset", "seed", "forget_class", "forget_fraction", "method", "quant"]
    return frame.sort_values(order, kind="stable", ignore_index=True)


def deployment(quant: str, bn_reestimate: str) -> str:
    """'int8', or 'int8 + BN re-est. train': a quant mode after the deployment step that re-estimated BatchNorm."""
    return quant if bn_reestimate == "none" else f"{quant} + BN re-est. {bn_reestimate}"


def forget_label(forget_class, forget_fraction) -> str:
    if pd.notna(forget_class):
        return f"class {int(forget_class)}"
    return f"{forget_fraction:.0%} random" if pd.notna(forget_fraction) else "-"


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric column that is a measurement (new metric columns are picked up without a code change)."""
    return [c for c in frame.columns if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(frame[c])]
