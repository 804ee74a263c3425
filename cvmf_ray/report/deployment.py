"""Which deployment step undoes which unlearning: per model, the change of forget-train accuracy from the model as
unlearnt (fp32, no BatchNorm step) after each deployment step alone and combined, one row per method and
BatchNorm treatment (its BN-frozen control right below it; original and retrain as the references).

`deployment_steps` builds what the report's section shows (tables/deployment_steps.*, figures/deployment_steps.*);
`grid` is the pivot under it, which scripts/bn_table.py prints any metric through, so the two never disagree on
rows, columns or what a cell without a number says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cvmf_ray.report.figures import Plot, Skipped, annotated_heatmap
from cvmf_ray.report.frame import GROUP, deployment
from cvmf_ray.report.stats import aggregate
from cvmf_ray.report.tables import estimates
from cvmf_ray.schema import NOT_APPLICABLE

RECOVERY = "recovery_forget_train_accuracy"
MARKS = {NOT_APPLICABLE: "n/a", "failed": "failed"}  # what a cell without a number reads when all its rows say so


def has_steps(frame: pd.DataFrame) -> bool:
    """Whether any row went through a deployment step: a quant mode other than fp32, or a BatchNorm step."""
    return bool(((frame["quant_mode"] != "fp32") | (frame["bn_reestimate"] != "none")).any())


def step_columns(frame: pd.DataFrame, reference: bool = False) -> dict[str, str]:
    """`to_frame`'s deployment label -> column heading ('int8', 'BN re-est. retain', 'int8 + BN re-est. retain') of
    every deployment in `frame`, in column order: each quant mode alone (widest first), each BatchNorm step alone,
    then each combination; with `reference`, fp32 itself (what every recovery is measured against) first."""
    present = frame.drop_duplicates("quant")
    bn_step = present["bn_reestimate"] != "none"
    kind = bn_step.astype(int) + (bn_step & (present["quant_mode"] != "fp32"))  # 0 quant alone, 1 BN alone, 2 both
    order = present.assign(kind=kind, code=present["quant"].cat.codes).sort_values(["kind", "code"])
    labels = {
        q: deployment(m, b).removeprefix("fp32 + ")
        for q, m, b in zip(order["quant"], order["quant_mode"], order["bn_reestimate"], strict=True)
    }
    return labels if reference else {q: label for q, label in labels.items() if label != "fp32"}


def _mark(status: pd.Series) -> str:
    """n/a or failed where every row of a cell is so; '-' for any other cell without a number (pending, mixed)."""
    return MARKS.get(status.iloc[0], "-") if status.nunique() == 1 else "-"


def grid(frame: pd.DataFrame, cells: pd.Series, columns: dict[str, str], marks: bool = True) -> pd.DataFrame:
    """`cells` (indexed by GROUP) as a table: one row per (model, dataset, method) in report order, one column per
    deployment of `columns`; a cell without an entry says why (`marks`: n/a, failed, '-'), or is NaN."""
    status = frame.groupby(GROUP, observed=True)["status"].agg(_mark)
    values = cells.reindex(status.index)
    values = values.where(values.notna(), status) if marks else values
    wide = values.unstack("quant").reindex(columns=list(columns)).rename(columns=columns).rename_axis(columns=None)
    wide = wide.dropna(how="all")  # a row with no deployment here (a method run at fp32 only)
    return wide.fillna("-") if marks else wide.astype(float)


@dataclass
class Steps:
    """One metric after each deployment step: `text` the table's cells, `mean` their means (NaN where none);
    rows (model, dataset, method), columns the steps."""

    text: pd.DataFrame
    mean: pd.DataFrame

    def table(self) -> pd.DataFrame:
        """Flat, for tables/: model, dataset, method, then one column per step."""
        flat = self.text.reset_index()
        return flat.assign(method=flat["method"].astype(str))


def deployment_steps(frame: pd.DataFrame, stats: pd.DataFrame | None = None, metric: str = RECOVERY) -> Steps:
    """`metric` per method and BatchNorm treatment after each deployment step, as 'mean ± half-width' of its 95%
    t-interval over seeds × forget sets (`aggregate`, `estimate`). `frame`: `to_frame` of the results table;
    `stats`: `aggregate` of it, if at hand. A metric that is not a recovery gets the fp32 column too."""
    stats = aggregate(frame, metrics=[metric]) if stats is None else stats
    rows = stats[stats["metric"] == metric]
    index = pd.MultiIndex.from_frame(rows[GROUP])
    columns = step_columns(frame, reference=not metric.startswith("recovery_"))
    text = grid(frame, pd.Series(estimates(rows), index=index, dtype=object), columns)
    mean = grid(frame, pd.Series(rows["mean"].to_numpy(), index=index), columns, marks=False)
    return Steps(text, mean.reindex(index=text.index, columns=text.columns))


def deployment_heatmap(steps: Steps) -> Figure:
    """One panel per (model, dataset) with a number, stacked, on one colour scale centred on 0."""
    panels = [key for key, mean in steps.mean.groupby(level=["model", "dataset"]) if mean.notna().any(axis=None)]
    if not panels:
        raise Skipped("no model after a deployment step has a recovery (an ok fp32 model as unlearnt to differ from)")
    limit = max(np.nanmax(np.abs(steps.mean.to_numpy(dtype=float))), 0.01)
    heights = [len(steps.mean.loc[key]) for key in panels]
    fig = Figure(figsize=(3.4 + 0.95 * steps.mean.shape[1], sum(1.3 + 0.36 * h for h in heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[h + 3 for h in heights])[:, 0]
    for ax, key in zip(axes, panels, strict=True):
        labels = steps.text.loc[key].map(lambda cell: cell.replace(" ", "\n", 1))  # the mean above its interval
        image = annotated_heatmap(
            ax, steps.mean.loc[key], "RdBu_r", Normalize(-limit, limit), labels=labels, fontsize=6.5
        )
        ax.set_title(" on ".join(key), fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.9 / len(panels) ** 0.5, label="mean change of forget-train accuracy")
    return fig


DEPLOYMENT_PLOT = Plot(
    "deployment_steps",
    "Which deployment step undoes unlearning?",
    "Change of forget-train accuracy after each deployment step (columns: each weight quantization alone, each "
    "BatchNorm re-estimation alone, then both) from the same model as unlearnt (fp32, no BatchNorm step), per "
    "method and BatchNorm treatment (rows); mean over seeds × forget sets above its 95% t-interval. Red, positive "
    "= the step undid forgetting; blue = the model forgot more; one colour scale for every panel; grey = no "
    "number (n/a: the step does not apply; failed; -: not run).",
    deployment_heatmap,
)
