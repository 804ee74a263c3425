"""The report's "Which deployment step undoes unlearning" table and figure, on a small table whose every recovery
is spelt out here: each cell's mean and 95% t-interval are recomputed from those values with scipy.

Two models on digits, 3 seeds x 2 forget classes (n = 6 per cell); original, retrain, gradient_ascent in train
mode and BN-frozen, ssd (weight-only, `eval`); fp32 and int8, each after no BatchNorm step, `train` and `retain`.
small_cnn_gn has no BatchNorm: its BatchNorm steps and its BN-frozen control are `not_applicable`. One cell of
small_cnn (gradient_ascent (BN frozen) at int8 + BN re-est. retain) failed on every seed.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image
from scipy import stats

from cvmf_ray.report import page, write_report
from cvmf_ray.report.deployment import deployment_steps
from cvmf_ray.report.frame import to_frame
from cvmf_ray.schema import RUN_METADATA, SCHEMA

MODELS = ["small_cnn", "small_cnn_gn"]
SEEDS, CLASSES = range(3), (0, 3)
TREATMENTS = [("original", None), ("retrain", None), ("gradient_ascent", "train"), ("gradient_ascent", "frozen")]
TREATMENTS += [("ssd", "eval")]
ROWS = ["original", "retrain", "gradient_ascent", "gradient_ascent (BN frozen)", "ssd"]
DEPLOYMENTS = [(q, bn) for q in ("fp32", "int8") for bn in ("none", "train", "retain")]
COLUMNS = ["int8", "BN re-est. train", "BN re-est. retain", "int8 + BN re-est. train", "int8 + BN re-est. retain"]
LABELS = {  # (quant, bn_reestimate) -> its column
    ("int8", "none"): "int8",
    ("fp32", "train"): "BN re-est. train",
    ("fp32", "retain"): "BN re-est. retain",
    ("int8", "train"): "int8 + BN re-est. train",
    ("int8", "retain"): "int8 + BN re-est. retain",
}
FAILED = ("small_cnn", "gradient_ascent (BN frozen)", "int8 + BN re-est. retain")
CLIPPED = ("small_cnn", "gradient_ascent", "BN re-est. train")  # a mean near 1: its interval runs past 1.0


def label(method: str, unlearn_bn: str | None) -> str:
    return method + (" (BN frozen)" if unlearn_bn == "frozen" else "")


def base(model: str, row: str, column: str) -> float:
    """The cell's true mean recovery; every cell differs from every other."""
    if (model, row, column) == CLIPPED:
        return 0.97
    return round(-0.3 + 0.1 * ROWS.index(row) + 0.07 * COLUMNS.index(column) + 0.05 * MODELS.index(model), 3)


def status(model: str, unlearn_bn: str | None, deployment: tuple[str, str], row: str) -> str:
    if model == "small_cnn_gn" and (unlearn_bn == "frozen" or deployment[1] != "none"):
        return "not_applicable"
    failed = deployment != ("fp32", "none") and (model, row, LABELS[deployment]) == FAILED
    return "failed" if failed else "ok"


def deployment_table() -> tuple[pa.Table, dict[tuple[str, str, str], list[float]]]:
    """The results table, and the recovery values of each ok (model, row, column) cell."""
    noise = np.random.default_rng(23)
    rows, values = [], {}
    for model in MODELS:
        for seed in SEEDS:
            for forget_class in CLASSES:
                for method, unlearn_bn in TREATMENTS:
                    for quant, bn in DEPLOYMENTS:
                        row = label(method, unlearn_bn)
                        ok = status(model, unlearn_bn, (quant, bn), row)
                        recovery = None
                        if ok == "ok" and (quant, bn) != ("fp32", "none"):
                            cell = (model, row, LABELS[(quant, bn)])
                            recovery = base(*cell) + noise.normal(0, 0.04)
                            values.setdefault(cell, []).append(recovery)
                        rows.append(
                            {"key": f"k{len(rows)}", "model": model, "dataset": "digits", "seed": seed}
                            | {"forget_class": forget_class, "method": method, "unlearn_bn": unlearn_bn}
                            | {"quant": quant, "bn_reestimate": bn, "weight_bits": 32 if quant == "fp32" else 8}
                            | {"status": ok, "recovery_forget_train_accuracy": recovery}
                            | ({"test_accuracy": 0.9, "forget_train_accuracy": 0.05} if ok == "ok" else {})
                            | ({"error": "unlearning diverged: loss is nan"} if ok == "failed" else {})
                        )
    grid = {"name": "deployment", "methods": [m for m, _ in TREATMENTS[:3]] + ["ssd"]}
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.replace_schema_metadata({RUN_METADATA: json.dumps({"grid": grid})}), values


def expected(values: list[float]) -> str:
    """'mean ± half-width' of the 95% t-interval, or 'mean [low, high]' where [-1, 1] clips it."""
    mean = float(np.mean(values))
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    low, high = max(mean - half, -1.0), min(mean + half, 1.0)
    if (low, high) == (mean - half, mean + half):
        return f"{mean:.3f} ± {half:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


@pytest.fixture(scope="module")
def run() -> tuple[pa.Table, dict]:
    return deployment_table()


@pytest.fixture(scope="module")
def steps(run):
    return deployment_steps(to_frame(run[0]))


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deployment") / "report"
    write_report(run[0], out)
    return out


def test_each_cell_is_the_mean_and_t_interval_of_its_seeds_and_forget_sets(run, steps):
    _, values = run
    assert len(values) == (5 * 5 - 1) + 4 * 1  # small_cnn: all but the failed cell; small_cnn_gn: int8 alone
    for (model, row, column), recoveries in values.items():
        assert len(recoveries) == len(SEEDS) * len(CLASSES)
        assert steps.text.loc[(model, "digits", row), column] == expected(recoveries), (model, row, column)
        assert steps.mean.loc[(model, "digits", row), column] == pytest.approx(np.mean(recoveries), abs=1e-12)
    assert "[" in steps.text.loc[("small_cnn", "digits", CLIPPED[1]), CLIPPED[2]]  # clipped at 1.0, so uneven


def test_rows_are_treatments_with_the_control_below_and_columns_go_quant_bn_then_both(steps):
    table = steps.table()
    assert list(table.columns) == ["model", "dataset", "method", *COLUMNS]
    assert table["model"].tolist() == [m for m in MODELS for _ in ROWS]
    assert table["method"].tolist() == ROWS * 2  # gradient_ascent (BN frozen) right below gradient_ascent


def test_a_cell_without_a_number_says_why(steps):
    text = steps.text
    assert text.loc[("small_cnn", "digits", FAILED[1]), FAILED[2]] == "failed"
    assert np.isnan(steps.mean.loc[("small_cnn", "digits", FAILED[1]), FAILED[2]])
    gn = text.loc[("small_cnn_gn", "digits")]
    assert (gn.loc["gradient_ascent (BN frozen)"] == "n/a").all()  # no BatchNorm to freeze
    assert (gn.drop(columns="int8") == "n/a").all(axis=None)  # no BatchNorm to re-estimate
    assert not gn["int8"].drop("gradient_ascent (BN frozen)").isin(["n/a", "failed", "-"]).any()  # quantization does
    assert not text.loc[("small_cnn", "digits")].drop(index=FAILED[1]).isin(["n/a", "failed", "-"]).any(axis=None)


def test_the_report_has_the_section_its_table_files_and_figure(report, steps):
    page_html = (report / "report.html").read_text()
    assert "<h2>Which deployment step undoes unlearning</h2>" in page_html
    assert "<h3>small_cnn on digits</h3>" in page_html and "<h3>small_cnn_gn on digits</h3>" in page_html
    markdown = (report / "tables" / "deployment_steps.md").read_text()
    assert markdown == steps.table().to_markdown(index=False, disable_numparse=True) + "\n"
    assert markdown.splitlines()[0].split("|")[4].strip() == "int8"
    assert (report / "tables" / "deployment_steps.csv").read_text().startswith("model,dataset,method,int8,")
    assert "\\begin{tabular}" in (report / "tables" / "deployment_steps.tex").read_text()
    png = report / "figures" / "deployment_steps.png"
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG"
    with Image.open(png) as image:
        width, height = image.size
    assert width > 500 and height > 500 and png.stat().st_size > 30_000
    assert (report / "figures" / "deployment_steps.pdf").read_bytes().startswith(b"%PDF")
    assert "positive = the step undid" in page_html.split("deployment_steps.pdf")[0].rsplit("<figcaption>", 1)[1]


def test_a_run_without_a_deployment_step_gets_no_section(run, tmp_path, monkeypatch):
    table = run[0]
    fp32 = table.filter(pc.and_(pc.equal(table["quant"], "fp32"), pc.equal(table["bn_reestimate"], "none")))

    def untouched(*_):
        raise AssertionError("the section was built: the report of this run changed")

    monkeypatch.setattr(page, "_deployment", untouched)
    files = write_report(fp32, tmp_path)
    assert "deployment step" not in (tmp_path / "report.html").read_text()
    assert not [f for f in files if "deployment_steps" in f.name]


def test_bn_table_script_prints_through_the_same_pivot(run, steps):
    spec = importlib.util.spec_from_file_location("bn_table", Path(__file__).parents[1] / "scripts" / "bn_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    frame = to_frame(run[0])
    recovery = script.bn_table(frame, "recovery_forget_train_accuracy")
    table = steps.table()
    assert list(recovery.columns) == list(table.columns)
    assert recovery["method"].astype(str).tolist() == table["method"].tolist()
    assert (recovery[COLUMNS] == "n/a").equals(table[COLUMNS] == "n/a")
    accuracy = script.bn_table(frame, "forget_train_accuracy")
    assert list(accuracy.columns) == ["model", "dataset", "method", "fp32", *COLUMNS]  # the reference first
