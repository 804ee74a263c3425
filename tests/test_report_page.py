"""`write_report`: report.html, figures and tables from a real run of the embedded default, from the synthetic
10,000-row table, and from partial and failing runs; the page as headless Chromium shows it."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cvmf_ray.config import load_config
from cvmf_ray.grid import expand_grid
from cvmf_ray.report import aggregate, format_rows, write_report
from cvmf_ray.report.figures import PLOTS
from cvmf_ray.results import run_info
from cvmf_ray.schema import RUN_METADATA
from tests.chromium import open_page
from tests.synthetic import synthetic_table, synthetic_tuning

TABLES = ("summary", "ranking", "recovery_forget_acc", "recovery_mia_eff")


@pytest.fixture(scope="module")
def real_report(default_run, tmp_path_factory) -> tuple[pa.Table, Path]:
    table = pq.read_table(default_run / "results.parquet")
    out = tmp_path_factory.mktemp("real") / "report"
    write_report(table, out, title="default")
    return table, out


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "report"
    write_report(synthetic_table(), out, tuning=synthetic_tuning())
    return out


def assert_self_contained(page: str) -> None:
    """Opens from a file with no network: no scripts, no stylesheets, every image a data URI."""
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'<img src="([^"]{0,40})', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.findall(r'(?:src|href)="(?!data:)', page)


def recipe_rows(page: str) -> dict[str, list[str]]:
    """The page's table of training recipes: {dataset: its cells}, and the header as "dataset"."""
    table = page.split("<h3>Training recipe per dataset</h3>", 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
    return {row[0]: row[1:] for row in rows}


def test_a_real_run_gets_every_figure_its_table_supports(real_report):
    table, out = real_report
    page = (out / "report.html").read_text()
    assert_self_contained(page)
    drawn = {p.name for p in PLOTS if (out / "figures" / f"{p.name}-small_cnn-digits.png").exists()}
    has_class_columns = "test_class_accuracy" in table.column_names and table["test_class_accuracy"].null_count < len(
        table
    )
    expected = {p.name for p in PLOTS} - (set() if has_class_columns else {"class_retained"})
    assert drawn == expected
    for name in drawn:
        assert Image.open(out / "figures" / f"{name}-small_cnn-digits.png").size[0] > 400
        pdf = (out / "figures" / f"{name}-small_cnn-digits.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # vector, TrueType fonts embedded (no Type 3)
    if not has_class_columns:
        assert "not drawn, needs class-wise forgetting and the per-class column test_class_accuracy" in page
    assert (out / "figures" / "deployment_steps.png").exists()  # the default grid quantizes (fp16, bf16, int8)
    assert page.count("<figcaption>") == len(drawn) + 1  # the per-model plots, then which deployment step undoes
    assert f"{table.num_rows} evaluated models" in page
    recipes = recipe_rows(page)
    digits = dict(zip(recipes["dataset"], recipes["digits"], strict=True))
    assert (digits["epochs"], digits["lr"]) == ("6", "0.05")  # --epochs 6 over digits' own recipe, not 200 / 0.1


def test_a_real_run_of_one_seed_shows_n_1_and_no_interval(real_report):
    table, out = real_report
    stats = aggregate(table)
    assert (stats["n"] == 1).all() and stats["ci_low"].isna().all()
    row = table.filter(pc.and_(pc.equal(table["method"], "finetune"), pc.equal(table["quant"], "fp32"))).to_pylist()[0]
    mean = stats[(stats["method"] == "finetune") & (stats["quant"] == "fp32") & (stats["metric"] == "test_accuracy")]
    assert mean["mean"].item() == row["test_accuracy"]
    recovery = (out / "tables" / "recovery_forget_acc.md").read_text()
    assert "(n=1)" in recovery and "±" not in recovery
    assert "±" not in (out / "tables" / "summary.csv").read_text()


def test_tables_are_written_as_csv_markdown_and_latex(real_report):
    _, out = real_report
    for name in TABLES:
        csv, md, tex = ((out / "tables" / f"{name}.{ext}").read_text() for ext in ("csv", "md", "tex"))
        assert csv.splitlines()[0].startswith("model,dataset,")
        assert md.startswith("| model")
        assert "\\begin{tabular}" in tex and "gradient\\_ascent" in tex
    assert (out / "tables" / "aggregate.csv").read_text().startswith("model,dataset,method,quant,metric,mean,std,n,")


def test_the_per_row_table_of_a_real_run(real_report):
    table, _ = real_report
    lines = format_rows(table).splitlines()
    assert len(lines) == 2 + table.num_rows + 2  # header, rule, rows, constant columns, tally
    assert lines[-1] == f"{table.num_rows} rows: {table.num_rows} ok, 0 failed, 0 pending"


def test_the_synthetic_table_builds_the_whole_report(synthetic_report):
    page = (synthetic_report / "report.html").read_text()
    assert_self_contained(page)
    for plot in PLOTS:  # every input is there, the per-class columns included
        assert (synthetic_report / "figures" / f"{plot.name}-resnet18-cifar10.pdf").exists()
    assert "unlearn cell u3 failed: loss is NaN at step 3" in page and "never ran" in page
    failed = (synthetic_report / "tables" / "failed.csv").read_text().splitlines()
    assert len(failed) == 1 + 20
    assert "wall time</th><td>3600.0 s" in page and "cvmf-ray 0.1.0, torch 2.15.0" in page


def test_a_run_without_quantized_or_class_wise_rows_skips_those_figures(tmp_path):
    table = synthetic_table()
    table = table.filter(pc.and_(pc.equal(table["quant"], "fp32"), pc.less(table["seed"], 2)))
    random = table.set_column(
        table.schema.get_field_index("forget_class"), "forget_class", pa.nulls(len(table), pa.int64())
    )
    random = random.set_column(
        random.schema.get_field_index("forget_fraction"), "forget_fraction", pa.array([0.1] * len(table))
    )
    write_report(random, tmp_path)
    page = (tmp_path / "report.html").read_text()
    for note in ("no quantized model with an fp32 parent", "every model in this run stores weights at the same width"):
        assert note in page
    assert "no class-wise forgetting in this run" in page
    drawn = sorted(p.name.split("-")[0] for p in (tmp_path / "figures").glob("*.png"))
    assert drawn == ["efficacy_vs_cost", "privacy"]


def test_a_run_where_everything_failed_still_reports_why(tmp_path):
    table = synthetic_table().slice(0, 30)
    status = pa.array(["failed"] * 15 + ["pending"] * 15)
    error = pa.array(["train cell t0 failed: out of memory"] * 15 + [None] * 15)
    table = table.set_column(table.schema.get_field_index("status"), "status", status)
    table = table.set_column(table.schema.get_field_index("error"), "error", error)
    files = write_report(table, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "No evaluated model finished: nothing to draw." in page
    assert page.count("train cell t0 failed: out of memory") == 15 and page.count("never ran") == 15
    assert "0 ok</span>, <span class=bad>15 failed</span>, 15 pending" in page
    assert tmp_path / "tables" / "failed.tex" in files


def test_a_rerun_report_leaves_nothing_of_the_earlier_one(tmp_path):
    table = synthetic_table()
    table = table.filter(pc.less(table["seed"], 2))  # the earlier report: 2 seeds, with failed and pending rows
    write_report(table, tmp_path)
    assert (tmp_path / "tables" / "failed.csv").exists()
    ok = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.equal(table["quant"], "fp32")))
    files = write_report(ok, tmp_path)  # the failures were rerun; and this time fp32 only
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(files)
    assert not (tmp_path / "tables" / "failed.csv").exists()


@pytest.mark.parametrize("epochs", [None, 6])
def test_the_page_shows_the_recipe_each_dataset_trained_with(epochs, tmp_path):
    """Before: the grid's `train` block, the built-in recipe (200 epochs, lr 0.1), for a digits run, which trains
    with digits' own (30 epochs, lr 0.05). Now each dataset's recipe, the very one its train cells got."""
    config = load_config(datasets="digits,fashionmnist", epochs=epochs)
    grid = expand_grid(config)
    info = run_info(config, grid, {}, 0.0, 1.0)
    write_report(synthetic_table().slice(0, 200).replace_schema_metadata({RUN_METADATA: json.dumps(info)}), tmp_path)
    page = (tmp_path / "report.html").read_text()

    rows = recipe_rows(page)
    fields = rows.pop("dataset")
    assert list(rows) == ["digits", "fashionmnist"]
    for cell in grid.stage("train"):  # what was trained (less what does not change the numbers) is what is shown
        shown = dict(zip(fields, rows[cell.params["dataset"]], strict=True))
        assert {k: shown[k] for k in cell.params["recipe"]} == {
            k: "none" if v is None else str(v) for k, v in cell.params["recipe"].items()
        }
    digits, fashion = (dict(zip(fields, rows[d], strict=True)) for d in ("digits", "fashionmnist"))
    assert (digits["epochs"], digits["lr"], digits["flip"]) == (str(epochs or 30), "0.05", "False")
    assert (fashion["epochs"], fashion["lr"], fashion["grad_clip"]) == (str(epochs or 200), "0.1", "0.5")
    assert "<th>train</th>" not in page and "<th>epochs</th><td>" not in page  # the unresolved block is gone


def test_a_run_that_recorded_no_recipes_says_so(tmp_path):
    info = {"grid": {"name": "old", "datasets": ["digits"], "train": {"epochs": 200, "lr": 0.1}}}
    write_report(synthetic_table().slice(0, 200).replace_schema_metadata({RUN_METADATA: json.dumps(info)}), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Training recipe per dataset" not in page
    assert "records no resolved training recipe: the grid&#x27;s train is the built-in one" in page


@pytest.mark.parametrize("report", ["real_report", "synthetic_report"])
def test_the_page_loads_in_headless_chromium(report, request, tmp_path):
    value = request.getfixturevalue(report)
    out = value[1] if isinstance(value, tuple) else value
    view = open_page(out / "report.html", screenshot=tmp_path / "page.png")
    assert view.errors == []
    assert len(view.images) == len(list((out / "figures").glob("*.png")))
    assert all(image["complete"] and image["width"] > 0 for image in view.images), view.images
    assert ("Tuning: objective per trial" in {image["alt"] for image in view.images}) == (report == "synthetic_report")
    width, height = Image.open(tmp_path / "page.png").size
    assert width >= 1000 and height > 2000
