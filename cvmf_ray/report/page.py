"""`write_report`: report.html (one self-contained page), figures/*.png + *.pdf and tables/*.csv/.md/.tex; with
a deployment step (a quant mode other than fp32, a BatchNorm step), the section on which step undoes which
unlearning (`cvmf_ray.report.deployment`); with a run's tuning.parquet, a Tuning section (`cvmf_ray.report.tuning`).

The page embeds its figures as data URIs and its style inline: it opens from a file, with no network and
no server, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib
import pandas as pd
import pyarrow as pa

from cvmf_ray.report.deployment import DEPLOYMENT_PLOT, deployment_steps, has_steps
from cvmf_ray.report.figures import PLOTS, Plot, Skipped, Slice, method_colors
from cvmf_ray.report.frame import run_info, to_frame
from cvmf_ray.report.stats import aggregate, estimate, excludes_zero, ranking
from cvmf_ray.report.tables import (
    ESTIMATE_NOTE,
    RECOVERY_TABLES,
    drop_constant,
    failed_table,
    ranking_table,
    recovery_table,
    summary,
    write_table,
)
from cvmf_ray.report.tuning import TUNING_PLOT, study_table, tally, tuning_frame, values_table

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { padding: 2px 6px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td { white-space: nowrap; }
th { background: #f4f4f4; } .failed td:last-child { font-family: monospace; white-space: pre-wrap; }
.scroll { overflow-x: auto; } .identity th { white-space: nowrap; } .identity td { white-space: normal; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 13px; } .ok { color: #137333; } .bad { color: #b3261e; }
"""
PNG_DPI = 150
CSS_DPI = 96  # CSS pixels per inch
MAX_PAGE_ROWS = 500  # a table longer than this is cut on the page (never in tables/): the page stays light
NO_RECIPES = (
    "This run records no resolved training recipe: the grid's train is the built-in one, before each dataset's "
    "own changes and epochs."
)
PAPER_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9}  # TrueType in the PDFs, as journals ask


def write_report(
    table: pa.Table, out_dir: Path, title: str | None = None, tuning: pa.Table | None = None
) -> list[Path]:
    """Write the report of one results table under `out_dir`; return every file written, report.html first.

    Works on partial and failing runs: failed and pending rows are counted and listed, never aggregated, and
    a figure whose inputs the run lacks is replaced by a note saying which. `tuning`: the run's tuning.parquet,
    if it has one; it adds the Tuning section, its figure and the tables tuning_studies and tuning_values.
    """
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    frame, info = to_frame(table), run_info(table)
    stats = aggregate(frame)
    figures_html, figure_paths = _figures(frame, stats, out_dir / "figures")
    deployment_html, deployment_paths = _deployment(frame, stats, out_dir) if has_steps(frame) else ("", [])
    tables = {
        "summary": summary(stats),
        "ranking": ranking_table(stats),
        **{name: recovery_table(stats, metric) for name, metric in RECOVERY_TABLES.items()},
        "failed": failed_table(frame),
    }
    tuning_html, tuning_paths = ("", []) if tuning is None else _tuning(tuning_frame(tuning), out_dir)
    table_paths = [p for name, t in tables.items() if len(t) for p in write_table(t, out_dir / "tables", name)]
    aggregate_csv = out_dir / "tables" / "aggregate.csv"
    stats.to_csv(aggregate_csv, index=False)
    title = title or (info.get("grid") or {}).get("name") or out_dir.parent.name
    body = [
        f"<h1>cvmf-ray report: {html.escape(title)}</h1>",
        _glance(frame, stats),
        _identity(frame, info),
        "<h2>Figures</h2>",
        figures_html,
        deployment_html,
        tuning_html,
        _tables_html(tables),
    ]
    page = out_dir / "report.html"
    page.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n",
        encoding="utf-8",
    )
    written = [page, *figure_paths, *deployment_paths, *tuning_paths, *table_paths, aggregate_csv]
    _remove_stale(out_dir, written)
    return written


def _remove_stale(out_dir: Path, written: list[Path]) -> None:
    """Delete what an earlier report left in figures/ and tables/ that this one did not write (a failed.csv
    from before the failures were rerun, a figure whose inputs are gone): the folder is this report only."""
    for stale in [*out_dir.glob("figures/*"), *out_dir.glob("tables/*")]:
        if stale.suffix in (".png", ".pdf", ".csv", ".md", ".tex") and stale not in written:
            stale.unlink()


def _figures(frame: pd.DataFrame, stats: pd.DataFrame, folder: Path) -> tuple[str, list[Path]]:
    """Every plot for every (model, dataset) with ok rows, as HTML with the figure files it wrote."""
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return '<p class="note">No evaluated model finished: nothing to draw.</p>', []
    folder.mkdir(parents=True, exist_ok=True)
    methods, quants = list(frame["method"].cat.categories), list(frame["quant"].cat.categories)
    colors = method_colors(methods)
    parts, paths = [], []
    for (model, dataset), rows in ok.groupby(["model", "dataset"], sort=True):
        data = Slice(rows, stats[(stats["model"] == model) & (stats["dataset"] == dataset)], methods, quants, colors)
        parts.append(f"<h3>{html.escape(model)} on {html.escape(dataset)}</h3>")
        for plot in PLOTS:
            part, written = _figure(plot, data, folder / f"{plot.name}-{model}-{dataset}")
            parts.append(part)
            paths += written
    return "\n".join(parts), paths


def _figure(plot: Plot, data: Slice, stem: Path) -> tuple[str, list[Path]]:
    """Draw one plot to `stem`.png + .pdf and embed the PNG as a data URI; or the note saying why not."""
    with matplotlib.rc_context(PAPER_STYLE):
        try:
            fig = plot.draw(data)
        except Skipped as why:
            return f'<p class="note"><b>{html.escape(plot.title)}</b>: not drawn, {html.escape(str(why))}.</p>', []
        png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
        fig.savefig(png, dpi=PNG_DPI)
        fig.set_layout_engine("none")  # keep the layout the PNG computed: the PDF gets the same one, ~10% sooner
        fig.savefig(pdf, metadata={"CreationDate": None})  # no timestamp: the same run gives the same file
    width = round(fig.get_figwidth() * CSS_DPI)  # shown at its printed size, sharp on dense screens
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    part = (
        f'<figure><img src="{uri}" width="{width}" alt="{html.escape(plot.title)}">'
        f"<figcaption><b>{html.escape(plot.title)}</b> — {html.escape(plot.caption)} "
        f"(figures/{html.escape(pdf.name)})</figcaption></figure>"
    )
    return part, [png, pdf]


def _glance(frame: pd.DataFrame, stats: pd.DataFrame) -> str:
    """The answer in a few sentences: cell outcome, the method closest to retrain, what quantization did."""
    counts = frame["status"].value_counts()
    lines = [
        f"{len(frame)} evaluated models: <span class=ok>{counts.get('ok', 0)} ok</span>, "
        f"<span class=bad>{counts.get('failed', 0)} failed</span>, {counts.get('pending', 0)} pending."
    ]
    ranked = ranking(stats)
    unlearnt = ranked[(ranked["quant"] == "fp32") & (ranked["method"] != "original")]  # original: nothing unlearnt
    for (model, dataset), best in unlearnt.groupby(["model", "dataset"]):
        top = best.iloc[0]
        lines.append(
            f"{html.escape(model)} on {html.escape(dataset)}: closest to retrain at fp32 is "
            f"<b>{html.escape(top['method'])}</b>, gap "
            f"{estimate(top['mean'], top['ci_low'], top['ci_high'], top['n'])}."
        )
    recovery = stats[(stats["metric"] == "recovery_forget_train_accuracy") & (stats["quant"] != "fp32")]
    if len(recovery):
        largest = recovery.loc[recovery["mean"].abs().idxmax()]
        with_interval = recovery["ci_low"].notna().sum()
        significance = (
            f"{excludes_zero(recovery).sum()} of the {with_interval} method × mode cells with an interval exclude 0."
            if with_interval
            else "no cell has an interval: one run each (add seeds or forget sets)."
        )
        lines.append(
            f"Quantization: the largest mean change of forget-train accuracy is "
            f"{estimate(largest['mean'], largest['ci_low'], largest['ci_high'], largest['n'])} "
            f"({html.escape(largest['method'])} at {html.escape(largest['quant'])}; positive = forgetting undone); "
            f"{significance}"
        )
    return "<h2>At a glance</h2><ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def _identity(frame: pd.DataFrame, info: dict) -> str:
    """Grid, training recipes, package versions, hardware and wall time from the run's metadata, or what the
    rows tell."""
    grid = _grid(info) or {
        "models": list(dict.fromkeys(frame["model"])),
        "datasets": list(dict.fromkeys(frame["dataset"])),
        "methods": list(frame["method"].cat.categories),
        "quant": list(frame["quant"].cat.categories),
        "seeds": sorted(set(frame["seed"])),
        "forget sets": list(dict.fromkeys(frame["forget"])),
        "note": "this results.parquet records no grid: the one above is read from its rows",
    }
    environment = {
        "versions": ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items()),
        "hardware": ", ".join(f"{k}: {_plain(v)}" for k, v in (info.get("hardware") or {}).items()),
        "started": info.get("started"),
        "finished": info.get("finished"),
        "wall time": f"{info['wall_seconds']:.1f} s" if "wall_seconds" in info else None,
        "grid digest": info.get("grid_digest"),
    }
    environment = {k: v or "not recorded" for k, v in environment.items()}
    parts = ["<h2>Run</h2>", "<h3>Grid</h3>", _definitions(grid), *_recipes(info)]
    parts += ["<h3>Where and when</h3>", _definitions(environment)]
    if info.get("counts"):
        counts = pd.DataFrame(info["counts"]).T.reindex(columns=["done", "failed", "pending"]).fillna(0).astype(int)
        parts += ["<h3>Cells per stage</h3>", counts.rename_axis("stage").reset_index().to_html(index=False, border=0)]
    return "\n".join(parts)


def _grid(info: dict) -> dict | None:
    """The recorded grid; without `train` and `epochs` where the resolved recipes say what they came to."""
    grid = info.get("grid")
    if grid and info.get("recipes"):
        grid = {k: v for k, v in grid.items() if k not in ("train", "epochs")}
    return grid


def _recipes(info: dict) -> list[str]:
    """The recipe each dataset of the run trained with, as the grid resolved it (`results.run_info`)."""
    recipes = info.get("recipes")
    if recipes:
        table = pd.DataFrame.from_dict(recipes, orient="index").astype(object)  # each value as recorded: 0.1, not 0.10
        table = table.rename_axis("dataset").reset_index()
        return ["<h3>Training recipe per dataset</h3>", table.to_html(index=False, border=0, na_rep="none")]
    if (info.get("grid") or {}).get("train"):  # a run recorded before the resolved recipes were
        return [f'<p class="note">{html.escape(NO_RECIPES)}</p>']
    return []


def _definitions(items: dict) -> str:
    rows = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(_plain(v))}</td></tr>" for k, v in items.items()]
    return f'<table class="identity">{"".join(rows)}</table>'


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def _deployment(frame: pd.DataFrame, stats: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """The section on which deployment step undoes which unlearning: its figure, then one table per model (the
    files hold them all, tables/deployment_steps.*); with the files it wrote."""
    steps = deployment_steps(frame, stats)
    (out_dir / "figures").mkdir(exist_ok=True)
    figure, paths = _figure(DEPLOYMENT_PLOT, steps, out_dir / "figures" / DEPLOYMENT_PLOT.name)
    table = steps.table()
    paths += write_table(table, out_dir / "tables", DEPLOYMENT_PLOT.name, as_text=True)
    parts = ["<h2>Which deployment step undoes unlearning</h2>", f"<p>{html.escape(DEPLOYMENT_INTRO)}</p>", figure]
    for (model, dataset), rows in table.groupby(["model", "dataset"], sort=False):
        head = f"<h3>{html.escape(model)} on {html.escape(dataset)}</h3>"
        if (rows[list(steps.text.columns)] == "n/a").all(axis=None):  # a model without BatchNorm, BN steps only
            parts.append(f'{head}<p class="note">Every cell n/a: no deployment step of this run applies.</p>')
        else:
            parts.append(_table_html(rows, DEPLOYMENT_PLOT.name, head))
    return "\n".join(parts), paths


DEPLOYMENT_INTRO = (
    "Each cell: how much forget-train accuracy changed when the deployment step of its column was applied to the "
    "model of its row, against the same model as unlearnt (fp32, no BatchNorm step): positive = the step undid "
    "forgetting, negative = the model forgot more. Columns: each weight quantization alone (widest first), each "
    "BatchNorm re-estimation alone (on train, retain or test images), then each combination. Rows: each method, "
    "its BN-frozen control right below it, original and retrain as the references. Cells read mean ± half-width "
    "of the 95% t-interval over seeds × forget sets, or mean [low, high] where clipping to [−1, 1] made it uneven, "
    "or mean (n=1) where one run gives no interval; n/a: the step does not apply (a model without BatchNorm); "
    "failed: every run of the cell failed; -: not run (yet)."
)


def _tuning(trials: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """The Tuning section: what was tuned and how the trials went, the studies' figure, then their two tables;
    with the files it wrote."""
    if trials.empty:
        return '<h2>Tuning</h2><p class="note">tuning.parquet holds no trial yet.</p>', []
    (out_dir / "figures").mkdir(exist_ok=True)
    figure, paths = _figure(TUNING_PLOT, trials, out_dir / "figures" / TUNING_PLOT.name)
    tables = {"tuning_values": values_table(trials), "tuning_studies": study_table(trials)}
    paths += [p for name, t in tables.items() if len(t) for p in write_table(t, out_dir / "tables", name, as_text=True)]
    intro = (
        f"{tally(trials)} Each study tuned one method for one model, dataset and forget set against the retrained "
        "model, on a validation split held out of the training set (never the test set); the figures' and "
        "tables' METHOD@tuned rows use the chosen trial's values."
    )
    parts = ["<h2>Tuning</h2>", f"<p>{html.escape(intro)}</p>", figure]
    parts += [_table_html(tables[name], name, f"<h3>{html.escape(head)}</h3>") for name, head in TUNING_HEADS.items()]
    return "\n".join(parts), paths


TUNING_HEADS = {
    "tuning_values": "Tuned against published values (each searched hyperparameter, and any other the tuning changed)",
    "tuning_studies": "Per study: trials by outcome, the chosen trial, its objective and the objective's components "
    "(gaps to the retrained model; lower is better)",
}
HEADS = {
    "summary": f"Summary per model, dataset, method and quant mode ({ESTIMATE_NOTE})",
    "ranking": "Methods ranked by gap to retrain, per quant mode (retrain itself, gap 0, left out)",
    "recovery_forget_acc": "Recovery of forget-train accuracy (quantized − fp32 parent; + = forgetting undone)",
    "recovery_mia_eff": "Recovery of MIA efficacy (fp32 parent − quantized; + = forgetting undone)",
}


def _tables_html(tables: dict[str, pd.DataFrame]) -> str:
    """The tables section, then the failed and pending cells with their reasons in a section of their own."""
    parts = ["<h2>Tables</h2>"]
    parts += [_table_html(tables[name], name, f"<h3>{html.escape(head)}</h3>") for name, head in HEADS.items()]
    parts.append("<h2>Failed and pending cells</h2>")
    failed = tables["failed"]
    parts.append(_table_html(failed, "failed", "") if len(failed) else '<p class="note">None: every cell ran.</p>')
    return "\n".join(parts)


def _table_html(table: pd.DataFrame, name: str, head: str) -> str:
    if not len(table):
        return head + '<p class="note">Nothing to show in this run.</p>'
    view, same = drop_constant(table, ["model", "dataset"])
    files = f"tables/{name}.csv, .md, .tex" + (f"; {same}" if same else "")
    if len(view) > MAX_PAGE_ROWS:
        files += f"; the first {MAX_PAGE_ROWS} of {len(view)} rows (all of them in the files)"
        view = view.head(MAX_PAGE_ROWS)
    body = view.to_html(index=False, border=0, na_rep="-", escape=True, classes=name)
    return f'{head}<p class="note">{html.escape(files)}</p><div class="scroll">{body}</div>'
