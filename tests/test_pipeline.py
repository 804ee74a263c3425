"""End to end through real Ray Tune on the embedded default: the grid, resume, retries, failures, kills.

Few and fat: each test starts Ray once (~3 s) and runs a real grid on `digits`.
"""

import json
import os
import textwrap

import pyarrow.parquet as pq

from cvmf_ray import runner
from cvmf_ray.schema import OWN_COLUMNS
from tests.conftest import FAST, comparable, kill_session, metas, start_driver, wait_for


def test_default_grid_writes_every_result_and_a_rerun_starts_nothing(default_run, cli):
    rows = pq.read_table(default_run / "results.parquet").to_pylist()
    assert len(rows) == 20 and all(r["status"] == "ok" and r["error"] is None for r in rows)
    assert {(r["method"], r["quant"]) for r in rows} == {
        (m, q)
        for m in ("original", "retrain", "finetune", "gradient_ascent", "random_label")
        for q in ("fp32", "fp16", "bf16", "int8")
    }
    evaluations = {p.stem: json.loads(p.read_text()) for p in (default_run / "evaluations").glob("*.json")}
    assert evaluations.keys() == {r["key"] for r in rows}  # the JSON files and the table say the same
    assert all(evaluations[r["key"]] == {k: r[k] for k in OWN_COLUMNS} for r in rows)
    by = {(r["method"], r["quant"]): r for r in rows}
    assert by["retrain", "fp32"]["forget_train_accuracy"] == 0.0  # never saw class 0
    assert by["original", "fp32"]["forget_train_accuracy"] > 0.9
    assert by["retrain", "fp32"]["gap_to_retrain"] == 0.0
    for method in ("original", "finetune"):  # recovery: the quantized row's forget accuracy less its fp32 parent's
        quantized, fp32 = by[method, "int8"], by[method, "fp32"]
        expected = quantized["forget_train_accuracy"] - fp32["forget_train_accuracy"]
        assert abs(quantized["recovery_forget_train_accuracy"] - expected) < 1e-12
    assert by["finetune", "fp32"]["speedup_over_retrain"] > 0
    for row in rows:
        for split in ("test", "forget_train", "retain_train", "retain_test", "forget_test"):
            assert 0.0 <= row[f"{split}_accuracy"] <= 1.0

    for row in rows:  # beside the same-quant retrain model: the retrain model itself is at distance 0
        assert row["compare_key"] is not None
        if row["method"] == "retrain":
            assert row["privacy_score"] == 1.0 and row["js_to_retrain_test"] < 1e-12
            assert abs(row["kl_to_retrain_forget_train"]) < 1e-12
        else:
            assert row["js_to_retrain_test"] > 0 and row["privacy_score"] <= 1.0
    # the mechanism, on quantized rows of models that moved away from the original
    assert by["original", "int8"]["quant_update_ratio"] is None
    for method in ("finetune", "retrain"):
        row = by[method, "int8"]
        assert 0 < row["quant_update_ratio"] < 2 and 0 <= row["quant_snapped_back"] <= 1
        assert json.loads(row["quant_update_per_layer"]).keys() >= {"0", "3"}  # small_cnn's first two convs

    before = metas(default_run)
    tune_state = sorted(p.name for p in (default_run / "tune").rglob("*"))
    code, out, _ = cli("grid", "--results-dir", default_run.parent, *FAST)
    assert code == 0
    assert "nothing to run" in out  # no Tuner, so no Tune trial, was started
    assert sorted(p.name for p in (default_run / "tune").rglob("*")) == tune_state
    assert metas(default_run) == before  # nothing recomputed or rewritten
    code, out, _ = cli("status", default_run)
    assert code == 0 and "evaluate      20       0        0" in out and "compare       20       0        0" in out
    code, out, _ = cli("results", default_run)
    assert code == 0 and "20 rows" in out and "gradient_ascent" in out


USER_METHODS = '''
import os
from pathlib import Path

import torch


def flaky(model, data, params):
    """Raises once (a transient fault), then succeeds: Tune must retry the trial."""
    marker = Path(os.environ["CVMF_TEST_MARKER"])
    if not marker.exists():
        marker.write_text("raised once")
        raise RuntimeError("injected transient fault")
    return model


def diverges(model, data, params):
    """Produces NaN weights: the cell must fail with its reason while every other cell finishes."""
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model
'''


def test_transient_fault_is_retried_and_a_diverging_method_fails_alone(tmp_path, cli, monkeypatch):
    (tmp_path / "pipeline_methods.py").write_text(textwrap.dedent(USER_METHODS))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("CVMF_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [
        "grid",
        "--results-dir",
        tmp_path / "out",
        "--methods",
        "original,pipeline_methods:flaky,pipeline_methods:diverges",
    ]
    code, out, err = cli(*args, "--quant", "fp32,fp8_e4m3", "--forget-fractions", "0.1", *FAST)
    assert code == 1, out + err  # some cells failed, the rest finished
    assert (tmp_path / "marker").read_text() == "raised once"
    table = pq.read_table(tmp_path / "out/default/results.parquet").to_pylist()
    random_forgetting = [r for r in table if r["forget_fraction"] == 0.1]  # the second scenario, same grid
    assert {r["method"] for r in random_forgetting} == {
        "original",
        "pipeline_methods:flaky",
        "pipeline_methods:diverges",
    }
    assert all(r["forget_test_accuracy"] is None for r in random_forgetting)  # no forget-class test images
    original = next(r for r in random_forgetting if r["method"] == "original" and r["quant"] == "fp32")
    assert original["status"] == "ok" and original["forget_train_accuracy"] > 0.9
    rows = {(r["method"], r["quant"]): r for r in table if r["forget_class"] == 0}
    assert rows["pipeline_methods:flaky", "fp32"]["status"] == "ok"  # retried by Tune, then succeeded
    assert rows["original", "fp8_e4m3"]["status"] == "ok"  # float8 weights travel between processes too
    for quant in ("fp32", "fp8_e4m3"):
        failed = rows["pipeline_methods:diverges", quant]
        assert failed["status"] == "failed" and "diverged" in failed["error"]
    assert "failed: pipeline_methods:diverges/" in out


def test_a_run_killed_midway_resumes_to_the_same_table(default_run, tmp_path, cli):
    results = tmp_path / "results"
    driver = start_driver("grid", "--results-dir", results, *FAST, log=tmp_path / "driver.log")
    wait_for(lambda: any(m["stage"] == "unlearn" for m in metas(results / "default").values()), driver, "unlearning")
    kill_session(driver)
    finished_before = metas(results / "default")
    assert not (results / "default/results.parquet").exists()

    code, _, _ = cli("grid", "--results-dir", results, *FAST)
    assert code == 0
    after = metas(results / "default")
    assert all(after[key] == meta for key, meta in finished_before.items())  # nothing finished was recomputed
    assert comparable(results / "default/results.parquet") == comparable(default_run / "results.parquet")


def test_a_lone_training_takes_every_core_and_trainings_side_by_side_share_them(tmp_path, cli, monkeypatch):
    """Every core busy (runner.DagSearcher._cpus_for). Digits' trainings are too short to pay for a fresh process
    (runner.WIDE_MIN_WORK), so the test lowers that bar: it checks the rule, not digits' size."""
    monkeypatch.setattr(runner, "WIDE_MIN_WORK", 0)
    cores = os.cpu_count()
    alone = ["--methods", "original", "--quant", "fp32", "--epochs", "2", "--results-dir", tmp_path]
    assert cli("grid", *alone, "--name", "alone")[0] == 0
    assert cli("grid", *alone, "--name", "capped", "--cpus", "1")[0] == 0  # --cpus stays an upper bound
    assert cli("grid", *alone, "--name", "pair", "--methods", "original,retrain")[0] == 0

    def threads(name: str) -> list[int]:
        return sorted(m["placement"]["threads"] for m in metas(tmp_path / name).values() if m["stage"] == "train")

    assert threads("alone") == [cores]
    assert threads("capped") == [1]
    assert threads("pair") == [max(1, cores // 2)] * 2  # two ready at once: each its half, never more than all
    evaluation = [m["placement"]["threads"] for m in metas(tmp_path / "alone").values() if m["stage"] == "evaluate"]
    assert evaluation == [cores]  # the lone evaluation after it too: the training's cores are free again


def test_bn_steps_and_controls_through_the_grid_and_a_model_without_batchnorm_says_they_do_not_apply(tmp_path, cli):
    code, out, err = cli(
        "grid", "--results-dir", tmp_path, "--models", "small_cnn,small_cnn_gn", "--methods",
        "original,retrain,gradient_ascent", "--quant", "fp32,int8", "--bn-reestimate", "none,retain",
        "--unlearn-bn", "train,frozen", *FAST,
    )  # fmt: skip
    assert code == 0, out + err
    rows = pq.read_table(tmp_path / "default/results.parquet").to_pylist()
    by = {(r["model"], r["method"], r["unlearn_bn"], r["bn_reestimate"], r["quant"]): r for r in rows}
    skipped = [r for r in rows if r["status"] == "not_applicable"]
    assert {r["model"] for r in skipped} == {"small_cnn_gn"} and all("no BatchNorm" in r["error"] for r in skipped)
    assert len(skipped) == 3 * 2 + 2 * 2  # retain for 3 models x 2 modes; GA frozen x (none, retain) x 2 modes
    assert all(r["status"] == "ok" for r in rows if r["status"] != "not_applicable")
    step = by["small_cnn", "gradient_ascent", "train", "retain", "fp32"]
    assert (step["bn_reestimate_batches"], step["bn_reestimate_batch_size"]) == (100, 64)  # digits trains in 64s
    assert step["recovery_forget_train_accuracy"] > 0.5  # the statistics held the forgetting: it comes back
    frozen = by["small_cnn", "gradient_ascent", "frozen", "none", "fp32"]
    assert json.loads(frozen["method_params"])["unlearn_bn"] == "frozen"
    assert by["small_cnn_gn", "gradient_ascent", "train", "none", "int8"]["status"] == "ok"
    code, out, err = cli("report", tmp_path / "default")
    assert code == 0, err
    html = (tmp_path / "default/report/report.html").read_text()
    assert "int8 + BN re-est. retain" in html and "gradient_ascent (BN frozen)" in html
