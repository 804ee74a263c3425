"""Statistics a reviewer accepts: mean, standard deviation, n and a 95% t-interval per group and metric.

The unit of replication is one evaluated model: a (seed, forget set) pair. Recovery columns are already
paired differences (quantized − its own fp32 parent), so their t-interval is the paired interval.
With n = 1 there is no interval: std and the bounds are NaN, shown as "n=1", never as zero width.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from cvmf_ray.report.frame import GROUP, metric_columns, to_frame
from cvmf_ray.schema import GROUP_COMPARISONS

CONFIDENCE = 0.95


def aggregate(table: pa.Table | pd.DataFrame, by: list[str] = GROUP, metrics: list[str] | None = None) -> pd.DataFrame:
    """Long form, one row per (group, metric): mean, std, n, ci_low, ci_high over the group's ok rows.

    `table` is the results table or `to_frame` of it; `metrics` defaults to every metric column. Failed and
    pending rows are left out; a metric a row does not have (NaN) does not count towards its n.
    """
    frame = to_frame(table) if isinstance(table, pa.Table) else table
    metrics = metric_columns(frame) if metrics is None else metrics
    ok = _one_value_per_group(frame.loc[frame["status"] == "ok"])
    long = ok[[*by, *metrics]].melt(id_vars=by, var_name="metric")
    long["metric"] = pd.Categorical(long["metric"], categories=metrics, ordered=True)
    grouped = long.dropna(subset=["value"]).groupby([*by, "metric"], observed=True, sort=True)["value"]
    result = grouped.agg(["mean", "std", "count", "sem"]).reset_index().rename(columns={"count": "n"})
    half = stats.t.ppf((1 + CONFIDENCE) / 2, result["n"] - 1) * result["sem"]  # NaN for n = 1 (df = 0)
    result["ci_low"], result["ci_high"] = result["mean"] - half, result["mean"] + half
    return result.drop(columns="sem")


def _one_value_per_group(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep a group-level comparison (forgetting quality: one value per compare cell, over its seeds) on one row
    of its group: its copies on the other seeds' rows are not replicates."""
    columns = [c for c in GROUP_COMPARISONS if c in frame.columns]
    if not columns or "compare_key" not in frame.columns:
        return frame
    repeated = frame["compare_key"].notna() & frame.duplicated("compare_key")
    frame = frame.copy()
    frame.loc[repeated, columns] = np.nan
    return frame


def excludes_zero(stats_rows: pd.DataFrame) -> pd.Series:
    """True where the interval lies wholly above or below 0 (False for n = 1: no interval)."""
    return (stats_rows["ci_low"] > 0) | (stats_rows["ci_high"] < 0)


def estimate(mean: float, low: float, high: float, n: int, row_n: int | None = None, digits: int = 3) -> str:
    """'0.896 ± 0.012' (95% half-width); without an interval '0.896 (n=1)', or '0.896' where the table's own n
    column (`row_n`) already says n = 1; '-' with no value."""
    if not np.isfinite(mean):
        return "-"
    if np.isfinite(high):
        return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"
    return f"{mean:.{digits}f}" + ("" if n == row_n else f" (n={n})")


def ranking(aggregated: pd.DataFrame) -> pd.DataFrame:
    """Methods ranked by mean gap to retrain within each (model, dataset, quant); retrain itself (gap 0) left out."""
    gaps = aggregated[(aggregated["metric"] == "gap_to_retrain") & (aggregated["method"] != "retrain")].copy()
    gaps["rank"] = gaps.groupby(["model", "dataset", "quant"], observed=True)["mean"].rank(method="min")
    gaps["rank"] = gaps["rank"].astype(int)
    return gaps.sort_values(["model", "dataset", "quant", "rank"]).reset_index(drop=True)
