"""The report's tuning section, from tuning.parquet alone: each study's search, and what it changed.

A study tunes one method for one (model, dataset, forget set); the table holds one row per trial
(`cvmf_ray.schema.TUNING_SCHEMA`). Its `published` column (the method's values without tuning) is what the tuned
values are compared with, so the report never imports the methods (nor torch).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cvmf_ray.report.figures import Plot, Skipped
from cvmf_ray.report.frame import forget_label
from cvmf_ray.schema import OBJECTIVE_COMPONENTS

STUDY = ["model", "dataset", "forget", "method"]  # what names a study for a person
STATUSES = ("ok", "diverged", "failed", "pending")
MARKS = {  # how each scored outcome is drawn; pending trials have no score and are not
    "ok": {"marker": "o", "ms": 4, "color": "#1f77b4", "label": "trial"},
    "diverged": {"marker": "x", "ms": 6, "mew": 1.5, "color": "#b3261e", "label": "diverged (scored worst)"},
    "failed": {"marker": "s", "ms": 5, "mfc": "none", "color": "black", "label": "failed (scored worst)"},
}
LEGEND = [*(style["label"] for style in MARKS.values()), "best so far", "chosen"]
DIGITS = 4


def tuning_frame(table: pa.Table) -> pd.DataFrame:
    """The trials in study order (model, dataset, forget set, method), then trial order; `forget` a label and
    `hparams` / `published` parsed into dicts."""
    frame = table.to_pandas()
    frame["forget"] = [forget_label(c, f) for c, f in zip(frame["forget_class"], frame["forget_fraction"], strict=True)]
    for column in ("hparams", "published"):
        frame[column] = [json.loads(v) if isinstance(v, str) and v else {} for v in frame[column]]
    order = ["model", "dataset", "forget_class", "forget_fraction", "method", "study", "trial"]
    return frame.sort_values(order, kind="stable", ignore_index=True)


def best_so_far(trials: pd.DataFrame) -> pd.Series:
    """The lowest objective up to each trial, by trial number: the curve the search converges along. A trial
    with no score yet (pending) keeps the value before it; before the first score there is none (NaN)."""
    ordered = trials.sort_values("trial")
    objective = ordered["objective"].astype(float)
    return objective.where(np.isfinite(objective)).cummin().ffill().set_axis(ordered["trial"].to_numpy())


def _chosen(trials: pd.DataFrame) -> pd.Series | None:
    """The trial whose values the study chose (`best`), or None while it has not chosen."""
    chosen = trials[trials["best"].eq(True)]
    return chosen.iloc[0] if len(chosen) else None


def tuning_figure(frame: pd.DataFrame) -> Figure:
    """One panel per study, three to a row: each trial's objective, the best so far, the chosen trial ringed."""
    studies = [trials for _, trials in frame.groupby("study", sort=False)]
    if not np.isfinite(frame["objective"].astype(float)).any():
        raise Skipped("no tuning trial has a score yet")
    columns = min(3, len(studies))
    rows = -(-len(studies) // columns)
    fig = Figure(figsize=(3.4 * columns, 0.5 + 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, trials in zip(axes.flat, studies, strict=False):
        _study_panel(ax, trials)
    for ax in axes.flat[len(studies) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("objective (lower = closer to retrain)")
    drawn = {label: handle for ax in fig.axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    labels = [label for label in LEGEND if label in drawn]
    fig.legend([drawn[label] for label in labels], labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return fig


def _study_panel(ax, trials: pd.DataFrame) -> None:
    """One study's trials; the best-so-far line runs over the scored trials only, so it ends at the last one."""
    first = trials.iloc[0]
    ax.set_title(f"{first['method']}\n{first['model']} · {first['dataset']} · {first['forget']}", fontsize=8)
    objective = trials["objective"].astype(float)
    scored = np.isfinite(objective)
    if not scored.any():
        ax.text(0.5, 0.5, "no trial scored yet", transform=ax.transAxes, ha="center", color="#555555")
        ax.set(xticks=[], yticks=[])
        return
    top = objective[scored].max()  # where a failed trial without a recorded score is drawn
    for status, style in MARKS.items():
        part = trials["status"] == status
        if part.any():
            ax.plot(trials.loc[part, "trial"], objective[part].where(scored[part], top), linestyle="none", **style)
    line = best_so_far(trials[scored])
    ax.step(line.index, line.to_numpy(), where="post", color="black", lw=1, label="best so far")
    chosen = _chosen(trials)
    if chosen is not None:
        ax.plot([chosen["trial"]], [chosen["objective"]], "o", ms=11, mfc="none", mec="#e37400", mew=1.8,
                label="chosen")  # fmt: skip
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.08)
    ax.grid(alpha=0.3)


TUNING_PLOT = Plot(
    "tuning",
    "Tuning: objective per trial",
    "One panel per study (method, then model · dataset · forget set). Each trial's objective, the weighted norm of "
    "its retain, forget, validation and MIA gaps to the retrained model on the tuning samples (lower is better); "
    "× diverged and □ failed trials sit at the worst score they were given; the line is the best so far in trial "
    "order; the ring marks the chosen trial, whose values the METHOD@tuned rows use.",
    tuning_figure,
)


def study_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per study: trials by outcome, the chosen trial ('-' while none is), its objective and the
    objective's components (formatted: the table is text, as the report's others)."""
    rows = []
    for _, trials in frame.groupby("study", sort=False):
        counts, chosen = trials["status"].value_counts(), _chosen(trials)
        scores = {c: np.nan if chosen is None else chosen[c] for c in ("objective", *OBJECTIVE_COMPONENTS)}
        rows.append(
            {
                **trials.iloc[0][STUDY].to_dict(),
                "trials": len(trials),
                **{status: int(counts.get(status, 0)) for status in STATUSES},
                "chosen trial": "-" if chosen is None else str(chosen["trial"]),
                **{k: f"{v:.{DIGITS}f}" if np.isfinite(v) else "-" for k, v in scores.items()},
            }
        )
    return pd.DataFrame(rows)


def values_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tuned against published values: per study, each searched hyperparameter (one that took more than one value
    over its trials) and any other whose chosen value differs from the published one."""
    rows = []
    for _, trials in frame.groupby("study", sort=False):
        chosen = _chosen(trials)
        tuned = {} if chosen is None else chosen["hparams"]
        published = next((p for p in trials["published"] if p), {})
        searched = _searched(trials["hparams"])
        identity = trials.iloc[0][STUDY].to_dict()
        for name in dict.fromkeys([*published, *tuned]):
            if name in searched or (name in tuned and not _same(published.get(name), tuned[name])):
                values = {"published": published.get(name), "tuned": tuned.get(name)}
                rows.append({**identity, "parameter": name, **{k: format_value(name, v) for k, v in values.items()}})
    return pd.DataFrame(rows)


def _searched(hparams: pd.Series) -> set[str]:
    """The hyperparameters that took more than one value over a study's trials."""
    seen: dict[str, set[str]] = {}
    for values in hparams:
        for name, value in values.items():
            seen.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    return {name for name, values in seen.items() if len(values) > 1}


def _same(a, b) -> bool:
    """Equal, numbers to rounding (a value read back from JSON is not always the same float)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-9) if numbers else a == b


def is_rate(name: str) -> bool:
    """A learning rate by its name (lr, unlearn_lr, lr_scale, learning_rate)."""
    return name == "lr" or name.startswith("lr_") or name.endswith("_lr") or "learning_rate" in name


def format_value(name: str, value) -> str:
    """A hyperparameter for a person: rates and tiny or huge numbers in scientific notation (3.16e-04), other
    numbers to four significant digits, integers and the rest as they are; '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isfinite(value):
        tiny_or_huge = value != 0 and not 1e-3 <= abs(value) < 1e5
        return f"{value:.2e}" if is_rate(name) or tiny_or_huge else f"{value:.4g}"
    if isinstance(value, int | float | bool | str):
        return str(value)
    return json.dumps(value, sort_keys=True)


def tally(frame: pd.DataFrame) -> str:
    """'2 studies, 12 trials: 10 ok, 1 diverged, 1 failed, 0 pending.'"""
    counts = frame["status"].value_counts()
    outcomes = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES)
    return f"{frame['study'].nunique()} studies, {len(frame)} trials: {outcomes}."
