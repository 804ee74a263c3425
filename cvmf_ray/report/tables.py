"""Tables for people: the aggregated summary, the ranking, the recovery grids and the failed cells, for the
terminal (`format_rows`, `format_aggregate`) and for papers (CSV, Markdown, LaTeX via pandas + tabulate).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
from tabulate import tabulate

from cvmf_ray.report.frame import GROUP, to_frame
from cvmf_ray.report.stats import INTERVAL, estimate, ranking
from cvmf_ray.schema import NOT_APPLICABLE

KEY_METRICS = {  # results column -> its short, unambiguous header; the order of the summary's columns
    "test_accuracy": "test_acc",
    "forget_train_accuracy": "forget_train_acc",
    "retain_train_accuracy": "retain_train_acc",
    "mia_efficacy": "mia_efficacy",
    "gap_to_retrain": "gap_to_retrain",
    "recovery_forget_train_accuracy": "recovery_forget_acc",
    "recovery_mia_efficacy": "recovery_mia_eff",
}
RECOVERY_TABLES = {"recovery_forget_acc": "recovery_forget_train_accuracy", "recovery_mia_eff": "recovery_mia_efficacy"}
ROW_METRICS = [m for m in KEY_METRICS if m != "recovery_mia_efficacy"]  # the per-row table stays narrower
ESTIMATE_NOTE = f"mean ± half-width of the {INTERVAL}, or mean [low, high] where clipped; no interval where n = 1"


def estimates(stats: pd.DataFrame, row_n: pd.Series | None = None) -> list[str]:
    """One 'mean ± half-width' (or clipped 'mean [low, high]') label per statistics row; `row_n`: the n its table
    shows beside it, if any."""
    row_n = [None] * len(stats) if row_n is None else row_n
    values = stats[["mean", "ci_low", "ci_high", "n"]].itertuples(index=False)
    return [estimate(*v, row_n=shown) for v, shown in zip(values, row_n, strict=True)]


def summary(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset, method, quant): n (ok rows) and 'mean ± half-width' of the key metrics."""
    group_n = stats.groupby(GROUP, observed=True)["n"].transform("max")
    key = stats["metric"].isin(list(KEY_METRICS))
    cells = stats[key].assign(metric=stats["metric"].astype(str), cell=estimates(stats[key], group_n[key]))
    wide = cells.pivot(index=GROUP, columns="metric", values="cell")
    wide = wide.reindex(columns=[m for m in KEY_METRICS if m in wide.columns]).fillna("-").rename(columns=KEY_METRICS)
    wide.insert(0, "n", stats.groupby(GROUP, observed=True)["n"].max().reindex(wide.index))
    return wide.reset_index().rename_axis(columns=None)


def ranking_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Methods ranked by gap to retrain within each (model, dataset, quant), with their unlearning time."""
    ranked = ranking(stats)
    seconds = stats[stats["metric"] == "unlearn_seconds"].set_index(GROUP)["mean"]
    return pd.DataFrame(
        {
            **{c: ranked[c] for c in ("model", "dataset", "quant", "rank", "method", "n")},
            "gap_to_retrain": estimates(ranked, ranked["n"]),
            "unlearn_s": seconds.reindex(pd.MultiIndex.from_frame(ranked[GROUP])).round(2).to_numpy(),
        }
    )


def recovery_table(stats: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Method × quant mode grid of one recovery metric (quantized rows only), as 'mean ± half-width'."""
    rows = stats[(stats["metric"] == metric) & (stats["quant"] != "fp32")]
    rows = rows.assign(cell=estimates(rows), quant=rows["quant"].cat.remove_unused_categories())
    grid = rows.pivot(index=["model", "dataset", "method"], columns="quant", values="cell")
    return grid.fillna("-").reset_index().rename_axis(columns=None)


def failed_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every evaluated model that is not ok (failed, pending in an interrupted run, or a combination that does
    not apply), with its reason."""
    columns = ["model", "dataset", "seed", "forget", "method", "quant", "status", "error"]
    return frame.loc[frame["status"] != "ok", columns].fillna({"error": "never ran"}).reset_index(drop=True)


def write_table(table: pd.DataFrame, folder: Path, stem: str, as_text: bool = False) -> list[Path]:
    """`stem`.csv, .md and .tex: the same table for a spreadsheet, a README and a paper. `as_text`: the cells are
    formatted already and the Markdown keeps them so (tabulate would read "1.00e-04" as a number, write 0.0001)."""
    paths = [folder / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(table.to_markdown(index=False, disable_numparse=as_text) + "\n")
    paths[2].write_text(table.to_latex(index=False, escape=True))
    return paths


def drop_constant(table: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """`table` without those of `columns` that hold one value on every row, and a line naming those values."""
    same = [c for c in columns if c in table and len(table) and table[c].nunique(dropna=False) == 1]
    return table.drop(columns=same), ", ".join(f"{c} {table[c].iloc[0]}" for c in same)


def _terminal(table: pd.DataFrame, constant: list[str]) -> str:
    """A plain-text table; the columns in `constant` that never change are named once below it instead."""
    view, same = drop_constant(table, constant)
    view = view.astype(object).where(view.notna(), None)
    text = tabulate(view, headers="keys", tablefmt="simple", showindex=False, floatfmt=".3f", missingval="-")
    return text + (f"\n{same}" if same else "")


def format_rows(table: pa.Table) -> str:
    """The per-row table for `cvmf-ray results`: one row per evaluated model, in report order."""
    frame = to_frame(table)
    metrics = [m for m in ROW_METRICS if m in frame.columns]
    view = frame[["model", "dataset", "seed", "forget", "method", "quant", *metrics, "status"]]
    counts = frame["status"].value_counts()
    tally = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "pending", NOT_APPLICABLE) if
                      counts.get(s, 0) or s != NOT_APPLICABLE)  # fmt: skip
    return (
        _terminal(view.rename(columns=KEY_METRICS), ["model", "dataset", "seed", "forget"])
        + f"\n{len(frame)} rows: {tally}"
    )


def format_aggregate(stats: pd.DataFrame) -> str:
    """The aggregated table for `cvmf-ray results --aggregate`: one row per (model, dataset, method, quant)."""
    if stats.empty:
        return "no evaluated model finished: nothing to aggregate"
    return _terminal(summary(stats), ["model", "dataset"]) + f"\n{ESTIMATE_NOTE}"
