"""The report's Tuning section, from a hand-built tuning.parquet of two studies x six trials (one diverged, one
failed; tests/synthetic.py spells out each): its figure, its tuned-against-published table, the chosen trials, and
the best-so-far curve."""

import math
import re

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cvmf_ray.report import write_report
from cvmf_ray.report.tuning import best_so_far, format_value
from tests.synthetic import synthetic_table, synthetic_tuning


@pytest.fixture(scope="module")
def results() -> pa.Table:
    table = synthetic_table()
    return table.filter(pc.and_(pc.equal(table["quant"], "fp32"), pc.less(table["seed"], 2)))


def html_rows(page: str, head: str) -> list[list[str]]:
    """The cells of the page's table under the heading that starts with `head`, header row first."""
    table = page.split(f"<h3>{head}", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]


def test_the_tuning_section_shows_each_study_and_what_it_changed(results, tmp_path):
    files = write_report(results, tmp_path, tuning=synthetic_tuning())
    page = (tmp_path / "report.html").read_text()
    png = tmp_path / "figures" / "tuning.png"
    assert png in files and (tmp_path / "figures" / "tuning.pdf") in files
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 20_000
    width, height = Image.open(png).size
    assert width > 800 and height > 300
    assert "<h2>Tuning</h2>" in page and "2 studies, 12 trials: 10 ok, 1 diverged, 1 failed, 0 pending." in page
    assert 'alt="Tuning: objective per trial"' in page

    values = html_rows(page, "Tuned against published values")
    header = values[0]
    shown = {(r[header.index("method")], r[header.index("parameter")]): r for r in values[1:]}
    assert set(shown) == {("gradient_ascent", "lr"), ("finetune", "epochs"), ("finetune", "weight_decay")}
    assert [shown["gradient_ascent", "lr"][header.index(c)] for c in ("published", "tuned")] == ["1.00e-04", "3.16e-05"]
    assert [shown["finetune", "epochs"][header.index(c)] for c in ("forget", "published", "tuned")] == [
        "10% random", "10", "20"]  # fmt: skip
    assert [shown["finetune", "weight_decay"][header.index(c)] for c in ("published", "tuned")] == ["5.00e-04", "0.001"]

    studies = html_rows(page, "Per study")
    header = studies[0]
    by_method = {r[header.index("method")]: dict(zip(header, r, strict=True)) for r in studies[1:]}
    assert {m: r["chosen trial"] for m, r in by_method.items()} == {"gradient_ascent": "3", "finetune": "4"}
    assert {m: (r["ok"], r["diverged"], r["failed"]) for m, r in by_method.items()} == {
        "gradient_ascent": ("5", "1", "0"), "finetune": ("5", "0", "1")}  # fmt: skip
    assert by_method["finetune"]["objective"] == "0.1000" and by_method["finetune"]["mia_gap"] == "0.0500"
    markdown = (tmp_path / "tables" / "tuning_values.md").read_text()
    assert markdown.startswith("| model") and "| 1.00e-04    | 3.16e-05 |" in markdown  # not read back as 0.0001


def test_a_report_without_tuning_is_unchanged_and_a_rerun_drops_the_tuning_files(results, tmp_path):
    with_tuning = write_report(results, tmp_path / "a", tuning=synthetic_tuning())
    page = (tmp_path / "a" / "report.html").read_text()
    without = write_report(results, tmp_path / "b")
    plain = (tmp_path / "b" / "report.html").read_text()
    section = page[page.index("<h2>Tuning</h2>") : page.index("<h2>Tables</h2>")]
    assert page.replace(section, "") == plain and "Tuning" not in plain
    tables = {f"tuning_{t}.{e}" for t in ("studies", "values") for e in ("csv", "md", "tex")}
    assert {p.name for p in with_tuning} - {p.name for p in without} == {"tuning.png", "tuning.pdf", *tables}
    write_report(results, tmp_path / "a")
    assert not list((tmp_path / "a").rglob("tuning*"))


def test_best_so_far_is_the_running_minimum_in_trial_order():
    trials = pd.DataFrame(  # shuffled rows; trial 2 pending (no score yet) keeps the value before it
        {"trial": [3, 0, 2, 1, 5, 4], "objective": [0.2, None, None, 0.5, 0.6, math.inf]}
    )
    line = best_so_far(trials)
    assert line.index.tolist() == [0, 1, 2, 3, 4, 5]
    assert line.tolist()[1:] == [0.5, 0.5, 0.2, 0.2, 0.2] and math.isnan(line.iloc[0])


def test_hyperparameters_read_as_people_write_them():
    assert format_value("lr", 0.01) == "1.00e-02" and format_value("unlearn_lr", 0.5) == "5.00e-01"
    assert format_value("alpha", 0.25) == "0.25" and format_value("alpha", 2e-5) == "2.00e-05"
    assert format_value("epochs", 10) == "10" and format_value("sparse", True) == "True"
    assert format_value("lr", None) == "-" and format_value("layers", ["fc"]) == '["fc"]'


def test_cvmf_ray_report_reads_the_runs_tuning_parquet(results, tmp_path, cli):
    (tmp_path / "grid.json").write_text("{}")
    pq.write_table(results, tmp_path / "results.parquet")
    pq.write_table(synthetic_tuning(), tmp_path / "tuning.parquet")
    code, out, err = cli("report", tmp_path)
    assert code == 0, err
    assert "<h2>Tuning</h2>" in (tmp_path / "report" / "report.html").read_text()
    (tmp_path / "tuning.parquet").write_bytes(b"not parquet")
    code, out, err = cli("report", tmp_path)
    assert code == 0 and "tuning.parquet is damaged" in err and "its tuning trials are left out" in err
    assert "<h2>Tuning</h2>" not in (tmp_path / "report" / "report.html").read_text()
