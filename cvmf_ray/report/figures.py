"""The report's figures: one short function each, drawn for one (model, dataset) with matplotlib.

Each function takes a `Slice` and returns a `matplotlib.figure.Figure`, or raises `Skipped` saying which
input this run lacks (no quantized rows, no class-wise forgetting, ...): the page then shows that note.
Figures are built without pyplot (no global state, no GUI backend); PNG goes through Agg.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cvmf_ray.report.stats import INTERVAL, aggregate, excludes_zero

PRIVACY_METRICS = (  # the table's MIA columns, then the optional summaries when a run has them
    "mia_efficacy",
    "mia_forget_auc",
    "mia_seed_lr_accuracy",
    "mia_retain_auc",
    "privacy_score",
    "forgetting_quality",
)
RECOVERY = (
    ("recovery_forget_train_accuracy", "forget-train accuracy recovery"),
    ("recovery_mia_efficacy", "MIA efficacy recovery"),
)


class Skipped(Exception):
    """This run lacks the figure's inputs; the message says which, for the page."""


@dataclass
class Slice:
    """The ok rows and their statistics for one (model, dataset), with the page-wide order and colours."""

    rows: pd.DataFrame
    stats: pd.DataFrame
    methods: list[str]  # the report's method order
    quants: list[str]  # the report's quant order
    colors: dict[str, str | tuple]

    def fp32(self, metric: str) -> pd.DataFrame:
        """Statistics of `metric` at fp32, one row per method, in method order."""
        rows = self.stats[(self.stats["quant"] == "fp32") & (self.stats["metric"] == metric)]
        return rows.set_index(rows["method"].astype(str)).reindex([m for m in self.methods if m in set(rows["method"])])


@dataclass(frozen=True)
class Plot:
    name: str  # file stem
    title: str
    caption: str  # one line: how to read it
    draw: Callable[[Slice], Figure]


REFERENCE_COLORS = {"original": "#999999", "retrain": "#000000"}  # the two references: grey and black


def method_colors(methods: list[str]) -> dict[str, str | tuple]:
    """One colour per method, the same in every figure of a report; the references grey and black."""
    others = [m for m in methods if m not in REFERENCE_COLORS]
    palette = [c for i, c in enumerate(colormaps["tab10" if len(others) <= 9 else "tab20"].colors) if i != 7]  # no grey
    return {**{m: palette[i % len(palette)] for i, m in enumerate(others)}, **REFERENCE_COLORS}


def _errorbars(ax, x, stats: pd.DataFrame, color, horizontal: bool = False) -> None:
    """95% intervals where one exists (n >= 2), as `aggregate` clipped them to the metric's range (so possibly
    uneven); an n = 1 point gets no bar rather than a zero-width one."""
    has = stats["ci_low"].notna().to_numpy()
    if not has.any():
        return
    mean, low, high = (stats[c].to_numpy()[has] for c in ("mean", "ci_low", "ci_high"))
    err = np.vstack([mean - low, high - mean])
    x = np.asarray(x)[has]
    if horizontal:
        ax.errorbar(mean, x, xerr=err, fmt="none", ecolor=color, capsize=3, lw=1)
    else:
        ax.errorbar(x, mean, yerr=err, fmt="none", ecolor=color, capsize=3, lw=1)


def annotated_heatmap(ax, values: pd.DataFrame, cmap: str, norm: Normalize, marks: pd.DataFrame | None = None,
                      fmt="{:.3f}", labels: pd.DataFrame | None = None, fontsize: float = 8):  # fmt: skip
    """Cells coloured and written with their value (`*` where `marks`), grey where nothing was measured;
    `labels`: the text of each cell instead, grey cells included (why there is no value: n/a, failed)."""
    data = np.ma.masked_invalid(values.to_numpy(dtype=float))
    palette = colormaps[cmap].with_extremes(bad="#dddddd")
    image = ax.imshow(data, cmap=palette, norm=norm, aspect="auto")
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), values.index)
    for (i, j), value in np.ndenumerate(values.to_numpy(dtype=float)):
        finite = np.isfinite(value)
        if labels is not None:
            text = labels.iat[i, j]
        else:
            text = fmt.format(value) + ("*" if marks is not None and marks.iat[i, j] else "") if finite else ""
        ink = "white" if finite and sum(palette(norm(value))[:3]) < 1.5 else "black"
        if text:
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=ink)
    return image


def recovery_heatmap(s: Slice) -> Figure:
    quantized = s.stats[s.stats["quant"] != "fp32"]
    panels = [(m, label) for m, label in RECOVERY if (quantized["metric"] == m).any()]
    if not panels:
        raise Skipped("no quantized model with an fp32 parent in this run")
    quants = [q for q in s.quants if q != "fp32" and q in set(quantized["quant"])]
    methods = [m for m in s.methods if m in set(quantized["method"])]
    fig = Figure(figsize=(len(panels) * (2.4 + 0.75 * len(quants)), 1.4 + 0.32 * len(methods)), layout="constrained")
    for ax, (metric, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        rows = quantized[quantized["metric"] == metric].assign(marked=lambda d: excludes_zero(d))
        grid = rows.pivot_table(index="method", columns="quant", values=["mean", "marked"], observed=True)
        mean = grid["mean"].reindex(index=methods, columns=quants)
        marked = grid["marked"].reindex(index=methods, columns=quants).fillna(0).astype(bool)
        limit = max(np.nanmax(np.abs(mean.to_numpy(dtype=float)), initial=0.0), 0.01)
        image = annotated_heatmap(ax, mean, "RdBu_r", Normalize(-limit, limit), marked, fmt="{:+.3f}")
        fig.colorbar(image, ax=ax, shrink=0.9, label="mean change from fp32")
        ax.set_title(label)
    return fig


def by_width(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Statistics per (method, bits per weight). Modes of one width (fp16 and bf16) are averaged within each run
    (seed, forget set) first, so n counts runs, not modes: two near-identical modes would halve the interval."""
    per_run = rows.groupby(["method", "weight_bits", "seed", "forget"], observed=True)[metrics].mean()
    return aggregate(per_run.reset_index().assign(status="ok"), by=["method", "weight_bits"], metrics=metrics)


def accuracy_vs_bits(s: Slice) -> Figure:
    if s.rows["weight_bits"].nunique() < 2:
        raise Skipped("every model in this run stores weights at the same width")
    metrics = ["test_accuracy", "forget_train_accuracy"]
    stats = by_width(s.rows, metrics)
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, metrics, strict=True):
        for method, rows in stats[stats["metric"] == metric].groupby("method", observed=True):
            color, target = s.colors[method], method == "retrain"  # the target: dashed, drawn on top
            style = {"ls": "--", "zorder": 4} if target else {}
            ax.plot(rows["weight_bits"], rows["mean"], marker="o", ms=4, color=color, label=method, **style)
            _errorbars(ax, rows["weight_bits"], rows, color)
        bits = sorted(stats["weight_bits"].unique(), reverse=True)
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits, [f"{b:g}" for b in bits])
        ax.minorticks_off()
        ax.set_xlim(max(bits) * 1.3, min(bits) / 1.3)  # widest first: precision falls to the right
        ax.set(xlabel="bits per stored weight", ylabel=metric.replace("_", " "))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def efficacy_vs_cost(s: Slice) -> Figure:
    gap, seconds = s.fp32("gap_to_retrain"), s.fp32("unlearn_seconds")
    methods = [m for m in gap.index if m in seconds.index and seconds.at[m, "mean"] > 0]
    if not methods:
        raise Skipped("no fp32 method has both a gap to retrain and an unlearning time")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for method in methods:
        x, y, color = seconds.loc[[method]], gap.loc[[method]], s.colors[method]
        ax.scatter(x["mean"], y["mean"], color=color, label=method, zorder=3)
        _errorbars(ax, x["mean"], y, color)
        clipped = x.assign(ci_low=x["ci_low"].clip(lower=x["mean"] / 100))  # a log axis has no room below 0 s
        _errorbars(ax, y["mean"], clipped, color, horizontal=True)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="unlearning seconds (log scale; retrain: its training time)", ylabel="gap to retrain")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def class_retained(s: Slice) -> Figure:
    rows = s.rows[(s.rows["quant"] == "fp32") & s.rows["forget_class"].notna()]
    rows = rows[rows["method"].isin(["original", "retrain"])]
    if "test_class_accuracy" in rows:
        rows = rows[rows["test_class_accuracy"].notna()]
    if "test_class_accuracy" not in rows or rows.empty:
        raise Skipped("needs class-wise forgetting and the per-class column test_class_accuracy")
    rows = rows.assign(  # an accuracy by name, so `aggregate` clips its interval to [0, 1]
        retained_accuracy=[
            _mean_without(a, int(c)) for a, c in zip(rows["test_class_accuracy"], rows["forget_class"], strict=True)
        ]
    )
    stats = aggregate(rows, by=["method", "forget_class"], metrics=["retained_accuracy"])
    classes = sorted(stats["forget_class"].unique())
    fig = Figure(figsize=(2.2 + 0.7 * len(classes), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.38
    for offset, (method, label) in zip(
        (-width / 2, width / 2), (("original", "original"), ("retrain", "retrained without c")), strict=True
    ):
        part = stats[stats["method"] == method].set_index("forget_class").reindex(classes)
        x = np.arange(len(classes)) + offset
        ax.bar(x, part["mean"], width, color=s.colors.get(method, "grey"), label=label)
        _errorbars(ax, x, part, "black")
    ax.set_xticks(range(len(classes)), [str(int(c)) for c in classes])
    low = np.nanmin(stats["mean"])
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set(xlabel="forgotten class c", ylabel="test accuracy, classes other than c")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _mean_without(accuracies, forget_class: int) -> float:
    """Mean test accuracy over the classes other than the forgotten one (a class with no image is null)."""
    values = np.array([np.nan if a is None else a for a in accuracies], dtype=float)
    return float(np.nanmean(np.delete(values, forget_class)))


def class_forget(s: Slice) -> Figure:
    rows = s.rows[(s.rows["quant"] == "fp32") & s.rows["forget_class"].notna()]
    if rows.empty:
        raise Skipped("no class-wise forgetting in this run")
    stats = aggregate(rows, by=["method", "forget_class"], metrics=["forget_train_accuracy"])
    grid = stats.pivot_table(index="method", columns="forget_class", values="mean", observed=True)
    grid = grid.reindex([m for m in s.methods if m in grid.index])
    grid.columns = [str(int(c)) for c in grid.columns]
    fig = Figure(figsize=(2.6 + 0.6 * grid.shape[1], 1.4 + 0.32 * grid.shape[0]), layout="constrained")
    ax = fig.subplots()
    image = annotated_heatmap(ax, grid, "viridis", Normalize(0, 1), fmt="{:.2f}")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=0, ha="center")
    ax.set_xlabel("forgotten class")
    fig.colorbar(image, ax=ax, shrink=0.9, label="forget-train accuracy")
    return fig


def privacy(s: Slice) -> Figure:
    panels = {m: s.fp32(m) for m in PRIVACY_METRICS if not s.fp32(m).empty}
    if not panels:
        raise Skipped("no fp32 model with membership-inference metrics in this run")
    methods = [m for m in s.methods if any(m in stats.index for stats in panels.values())]  # one y axis for all
    columns = 2 if len(panels) == 4 else min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.4 * columns, 0.8 + rows * (0.9 + 0.28 * len(methods))), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).flat
    y = np.arange(len(methods))[::-1]
    for ax, (metric, stats) in zip(axes, panels.items(), strict=False):
        stats = stats.reindex(methods)
        ax.barh(y, stats["mean"], color=[s.colors[m] for m in methods])
        _errorbars(ax, y, stats, "black", horizontal=True)
        if "retrain" in methods and np.isfinite(stats.at["retrain", "mean"]):
            ax.axvline(stats.at["retrain", "mean"], color="black", ls="--", lw=1)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    fig.axes[0].set_yticks(y, methods)
    for ax in fig.axes[len(panels) :]:
        ax.set_visible(False)
    return fig


PLOTS = (
    Plot(
        "recovery_heatmap",
        "Does forgetting survive quantization?",
        "Change from each model's own fp32 parent after quantization, mean over seeds × forget sets: red = "
        "quantization undid forgetting (forget-train accuracy up, MIA efficacy down), blue = it forgot more; "
        "* = the 95% interval excludes 0; grey = not run or failed.",
        recovery_heatmap,
    ),
    Plot(
        "accuracy_vs_bits",
        "Accuracy against bits per weight",
        "Test accuracy (left) and forget-train accuracy (right) as stored weights narrow from 32 to 4 bits; one line "
        f"per method (modes of one width averaged within each run); bars = the {INTERVAL} (none where n = 1); "
        "retrain (dashed) is the target.",
        accuracy_vs_bits,
    ),
    Plot(
        "efficacy_vs_cost",
        "Efficacy against cost",
        "Each method at fp32: gap to retrain (lower = closer to the gold standard) against unlearning seconds "
        f"(log scale); bottom left is best; bars = the {INTERVAL}; retrain's cost is its own training time.",
        efficacy_vs_cost,
    ),
    Plot(
        "class_retained",
        "Retained classes after retraining",
        "For each forgotten class c, test accuracy on the other classes: the original model beside the model "
        f"retrained without c; equal bars = forgetting c cost the other classes nothing; whiskers = the {INTERVAL}.",
        class_retained,
    ),
    Plot(
        "class_forget",
        "Forget accuracy per class",
        "Forget-train accuracy of each method (rows) for each forgotten class (columns) at fp32: 0 = the class is "
        "forgotten; the retrain row is the target.",
        class_forget,
    ),
    Plot(
        "privacy",
        "Privacy",
        f"Membership-inference metrics per method at fp32, mean with the {INTERVAL}; the dashed line is the "
        "retrained model's value, the one an unlearnt model should match.",
        privacy,
    ),
)
