"""Statistics a reviewer accepts: mean, standard deviation, n and a 95% t-interval per group and metric.

The unit of replication is one evaluated model: a (seed, forget set) pair. Recovery columns are already
paired differences (quantized − its own fp32 parent), so their t-interval is the paired interval.
With n = 1 there is no interval: std and the bounds are NaN, shown as "n=1", never as zero width.

A t-interval is symmetric and knows no bounds: for accuracies near 1 it runs past 1.0, values no model can
reach. So every interval is clipped to its metric's range (`metric_range`: accuracy, precision, recall, F1,
MIA AUCs, MIA efficacy and the scores in [0, 1]), here, once: the figures, the report's tables and
`cvmf-ray results --aggregate` all read these bounds. The clipped t-interval is the usual choice for the
mean of bounded values: the true mean lies in the range, so clipping cuts off only impossible values and keeps
the interval's coverage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from cvmf_ray.report.frame import GROUP, metric_columns, to_frame
from cvmf_ray.schema import GROUP_COMPARISONS

CONFIDENCE = 0.95
INTERVAL = "95% t-interval over seeds × forget sets, clipped to the metric's range ([0, 1]: accuracies, MIA, scores)"
UNIT_SUFFIXES = ("_accuracy", "_precision", "_recall", "_f1", "_auc")  # shares of images, and areas under curves
UNIT_METRICS = ("mia_efficacy", "gap_to_retrain", "privacy_score", "forgetting_quality")  # gap: mean |Δ| of shares
NON_NEGATIVE_SUFFIXES = ("_loss", "_seconds", "_steps", "_bytes")


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
    bounds = np.array([metric_range(m) for m in result["metric"].astype(str)], dtype=float).reshape(-1, 2)
    result["ci_low"] = (result["mean"] - half).clip(lower=bounds[:, 0])
    result["ci_high"] = (result["mean"] + half).clip(upper=bounds[:, 1])
    return result.drop(columns="sem")


def metric_range(metric: str) -> tuple[float, float]:
    """The values `metric` can take, which its interval is clipped to: [0, 1] for shares, AUCs and scores; [-1, 1]
    for a recovery (a difference of two shares); [0, inf) for losses, times, counts, sizes, speed-ups and
    divergences; else unbounded."""
    if metric.startswith("recovery_"):
        return -1.0, 1.0
    if metric.endswith(UNIT_SUFFIXES) or metric in UNIT_METRICS:
        return 0.0, 1.0
    if metric.endswith(NON_NEGATIVE_SUFFIXES) or metric.startswith(("kl_", "js_", "speedup_")):
        return 0.0, np.inf
    return -np.inf, np.inf


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
    """'0.896 ± 0.012' (95% half-width), or '0.990 [0.975, 1.000]' where clipping (`metric_range`) made the
    interval uneven; without an interval '0.896 (n=1)', or '0.896' where the table's own n column (`row_n`)
    already says n = 1; '-' with no value."""
    if not np.isfinite(mean):
        return "-"
    if not np.isfinite(high):
        return f"{mean:.{digits}f}" + ("" if n == row_n else f" (n={n})")
    below, above = f"{mean - low:.{digits}f}", f"{high - mean:.{digits}f}"
    if below == above:  # symmetric as far as shown
        return f"{mean:.{digits}f} ± {above}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ranking(aggregated: pd.DataFrame) -> pd.DataFrame:
    """Methods ranked by mean gap to retrain within each (model, dataset, quant); retrain itself (gap 0) left out."""
    gaps = aggregated[(aggregated["metric"] == "gap_to_retrain") & (aggregated["method"] != "retrain")].copy()
    gaps["rank"] = gaps.groupby(["model", "dataset", "quant"], observed=True)["mean"].rank(method="min")
    gaps["rank"] = gaps["rank"].astype(int)
    return gaps.sort_values(["model", "dataset", "quant", "rank"]).reset_index(drop=True)
