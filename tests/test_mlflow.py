"""MLflow tracking against a real `mlflow server` (sqlite, loopback): `cvmf-ray export` and `grid --mlflow`, read
back through MlflowClient; the UI as headless Chromium shows it. CVMF_RAY_SCREENSHOT=docs/mlflow-ui.png saves
the README's screenshot from it."""

import http.server
import json
import math
import os
import shutil
import sys
import threading
import time
import urllib.parse

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from cvmf_ray import tracking
from cvmf_ray.schema import IDENTITY_COLUMNS, RUN_METADATA
from cvmf_ray.store import RunStore
from tests.chromium import open_page
from tests.conftest import FAST, free_port
from tests.mlflow_server import mlflow_server

PARENT = "mlflow.parentRunId"
UNCLUTTER = """
document.querySelector('button[aria-label=Close]')?.click();  // the assistant's panel
document.querySelector('button[aria-label="Parameters - Show diff only"]')?.click();
Array.from(document.querySelectorAll('*')).find(e => e.children.length <= 2 && e.innerText?.trim() === 'Visualizations')
  ?.click();  // folded
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), workers=2) as uri:
        yield uri


def grid_runs(uri: str, experiment: str) -> tuple[object, dict]:
    """The experiment's one parent run, and its children by cvmf_ray.key (asserting nothing else is there)."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [run for run in runs if PARENT not in run.data.tags]
    assert len(parents) == 1
    children = {run.data.tags["cvmf_ray.key"]: run for run in runs if PARENT in run.data.tags}
    assert len(children) == len(runs) - 1  # one run per key: nothing duplicated
    assert all(run.data.tags[PARENT] == parents[0].info.run_id for run in children.values())
    return parents[0], children


def artifact(uri: str, run_id: str, path: str, tmp_path) -> bytes:
    with open(MlflowClient(uri).download_artifacts(run_id, path, str(tmp_path)), "rb") as file:
        return file.read()


def numeric(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in IDENTITY_COLUMNS and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip


def test_export_logs_one_nested_run_per_row_and_a_second_export_duplicates_nothing(default_run, server, cli, tmp_path):
    code, out, err = cli("export", default_run, "--mlflow", server, "--experiment", "export")
    assert code == 0, err
    # the 6 plots of small_cnn on digits, and which deployment step undoes unlearning
    assert "exported 20 rows" in out and "20 new, 0 updated, 0 unchanged" in out and "7 figures" in out
    table = pq.read_table(default_run / "results.parquet")
    parent, children = grid_runs(server, "export")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "default"
    assert parent.data.tags["cvmf_ray.grid"] == json.loads(table.schema.metadata[RUN_METADATA])["grid_digest"]
    client = MlflowClient(server)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"figures", "report.html"}
    assert len([a for a in client.list_artifacts(parent.info.run_id, "figures") if a.path.endswith(".png")]) == 7
    rows = table.to_pylist()
    assert children.keys() == {row["key"] for row in rows}
    for row in rows:
        run = children[row["key"]]
        assert run.info.status == "FINISHED" and run.data.tags["cvmf_ray.status"] == "ok"
        assert run.data.tags["cvmf_ray.parent_key"] == row["parent_key"]
        params = run.data.params
        assert {k: params.get(k) for k in ("model", "dataset", "seed", "forget_class", "method", "quant")} == {
            "model": "small_cnn", "dataset": "digits", "seed": "0", "forget_class": "0", "method": row["method"],
            "quant": row["quant"]}  # fmt: skip
        assert params["bn_reestimate"] == "none" and params.get("unlearn_bn") == row["unlearn_bn"]
        for name, value in json.loads(row["method_params"] or "{}").items():
            assert params["unlearn_bn" if name == "unlearn_bn" else f"method.{name}"] == (
                value if isinstance(value, str) else json.dumps(value))  # fmt: skip
        assert run.data.metrics == numeric(row)  # every numeric column, exactly
        assert "gap_to_retrain" in run.data.metrics and "test_accuracy" in run.data.metrics
    sample = rows[5]["key"]  # the artifact is evaluations/KEY.json, byte for byte
    evaluation = artifact(server, children[sample].info.run_id, "evaluation.json", tmp_path)
    assert evaluation == (default_run / "evaluations" / f"{sample}.json").read_bytes()
    finetune = next(row["key"] for row in rows if (row["method"], row["quant"]) == ("finetune", "int8"))
    assert children[finetune].info.run_name == "finetune · int8 · seed 0 · forget class 0"

    code, out, err = cli("export", default_run, "--mlflow", server, "--experiment", "export")
    assert code == 0, err
    assert "0 new, 0 updated, 20 unchanged" in out and "the report unchanged" in out
    again_parent, again = grid_runs(server, "export")
    assert again_parent.info.run_id == parent.info.run_id
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in children.items()}

    if os.environ.get("CVMF_RAY_SCREENSHOT"):  # the README's screenshot: the methods side by side at fp32
        compared = [children[row["key"]].info.run_id for row in rows if row["quant"] == "fp32"]  # the grid's order
        experiment = client.get_experiment_by_name("export").experiment_id
        query = urllib.parse.urlencode({"runs": json.dumps(compared), "experiments": json.dumps([experiment])})
        ready = "document.body.innerText.includes('forget_train_accuracy')"
        open_page(f"{server}/#/compare-runs?{query}", screenshot=os.environ["CVMF_RAY_SCREENSHOT"], width=1440,
                  height=1290, ready=ready, script=UNCLUTTER)  # fmt: skip


def test_a_partial_failing_run_exports_and_a_later_export_completes_it(copy_of_default_run, default_run, server, cli):
    run = copy_of_default_run
    rows = {(r["method"], r["quant"]): r for r in pq.read_table(run / "results.parquet").to_pylist()}
    failed, pending = rows["finetune", "int8"]["key"], rows["gradient_ascent", "fp16"]["key"]
    (run / "results.parquet").unlink()  # rebuilt from the run's files: failed and pending rows included
    for key in (failed, pending):
        shutil.rmtree(run / "artifacts" / key)
    (run / "failures").mkdir(exist_ok=True)
    (run / "failures" / f"{failed}.json").write_text(json.dumps({"key": failed, "error": "injected fault"}))

    code, out, err = cli("export", run, "--mlflow", server, "--experiment", "partial")
    assert code == 0, err
    assert "20 new" in out and "rebuilt 18 finished rows of 20" in err
    parent, children = grid_runs(server, "partial")
    assert parent.info.status == "FAILED"
    assert children[failed].info.status == "FAILED" and children[failed].data.tags["cvmf_ray.error"] == "injected fault"
    assert children[pending].info.status == "KILLED" and children[pending].data.tags["cvmf_ray.status"] == "pending"
    client = MlflowClient(server)
    assert client.list_artifacts(children[failed].info.run_id) == []  # no evaluation: nothing to attach
    assert sum(run.info.status == "FINISHED" for run in children.values()) == 18

    code, out, err = cli("export", default_run, "--mlflow", server, "--experiment", "partial")  # the same grid, done
    assert code == 0, err
    assert "0 new" in out
    parent, after = grid_runs(server, "partial")
    assert parent.info.status == "FINISHED" and {k: r.info.run_id for k, r in after.items()} == {
        k: r.info.run_id for k, r in children.items()}  # fmt: skip
    assert all(r.info.status == "FINISHED" and r.data.tags["cvmf_ray.status"] == "ok" for r in after.values())
    assert "cvmf_ray.error" not in after[failed].data.tags
    assert [a.path for a in client.list_artifacts(after[failed].info.run_id)] == ["evaluation.json"]


def test_grid_logs_each_model_live_and_a_later_export_adds_columns_but_no_run(tmp_path, server, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "live")
    code, out, err = cli("grid", "--results-dir", tmp_path, *FAST, "--mlflow", server)
    assert code == 0, out + err
    assert "MLflow" not in out + err
    rows = pq.read_table(tmp_path / "default/results.parquet").to_pylist()
    parent, live = grid_runs(server, "live")
    assert parent.info.status == "FINISHED" and live.keys() == {row["key"] for row in rows}
    for row in rows:  # the evaluate cell's own columns as it finished; the whole table's columns come later
        run = live[row["key"]]
        assert run.info.status == "FINISHED" and run.data.params["method"] == row["method"]
        assert "test_accuracy" in run.data.metrics and "gap_to_retrain" not in run.data.metrics
    key = rows[0]["key"]
    assert artifact(server, live[key].info.run_id, "evaluation.json", tmp_path) == (
        tmp_path / "default/evaluations" / f"{key}.json").read_bytes()  # fmt: skip

    code, out, err = cli("export", tmp_path / "default", "--mlflow", server)  # MLFLOW_EXPERIMENT_NAME: the same
    assert code == 0, err
    assert "0 new, 20 updated" in out
    _, exported = grid_runs(server, "live")
    assert {k: r.info.run_id for k, r in exported.items()} == {k: r.info.run_id for k, r in live.items()}
    assert all(exported[row["key"]].data.metrics == numeric(row) for row in rows)


def test_a_tracker_that_is_down_is_one_warning_and_the_grid_goes_on(tmp_path, cli):
    down = f"http://127.0.0.1:{free_port()}"
    grid = ["grid", "--results-dir", tmp_path, "--methods", "original", "--quant", "fp32", *FAST]
    code, out, err = cli(*grid, "--mlflow", down)
    assert code == 0, out + err
    said = [line for line in (out + err).splitlines() if "MLflow" in line]
    assert len(said) == 1 and said[0].startswith("warning:") and "is not reachable" in said[0]
    assert pq.read_table(tmp_path / "default/results.parquet").column("status").to_pylist() == ["ok"]


def test_a_tracker_that_refuses_mid_grid_is_one_warning_then_silence(default_run, server, tmp_path, monkeypatch):
    """The live logger as the driver drives it, without Ray: someone deletes the experiment while rows arrive."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "deleted")
    said = []
    live = tracking.LiveLog(server, RunStore(str(tmp_path / "refused")), "refusal-test", said.append)
    rows = pq.read_table(default_run / "results.parquet").to_pylist()
    live.row(rows[0])
    live.pool.submit(lambda: None).result()  # the row is sent
    client = MlflowClient(server)
    client.delete_experiment(client.get_experiment_by_name("deleted").experiment_id)
    for row in rows[1:4]:
        live.row(row)
    live.close(None)
    assert len(said) == 1 and said[0].startswith("warning: MLflow logging stopped: MLflow at") and "refused" in said[0]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # not on the stderr the test reads
        pass


@pytest.fixture
def not_mlflow():
    """An HTTP server on loopback that is no MLflow: its /health is a 404."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bad_values_and_a_missing_mlflow_are_one_line_and_exit_2(default_run, server, not_mlflow, cli, monkeypatch):
    export = ["export", default_run, "--mlflow"]
    cases = [
        ([*export, "127.0.0.1:5000"], "is not a tracking server's URI"),
        ([*export, "http://127.0.0.1:99999"], "is not a tracking server's URI"),
        ([*export, "http://"], "is not a tracking server's URI"),
        ([*export, f"http://127.0.0.1:{free_port()}"], "is not reachable (Connection refused)"),
        ([*export, not_mlflow], "is not reachable (/health answered 404"),
        (["grid", "--dry-run", "--mlflow", "sqlite:///mlflow.db"], "is not a tracking server's URI"),
        (["export", default_run.parent / "nothing", "--mlflow", server], "is not a cvmf-ray run directory"),
    ]
    for args, says in cases:
        started = time.monotonic()
        code, out, err = cli(*args)
        assert (code, out, err.count("\n")) == (2, "", 1) and says in err, (args, code, out, err)
        assert time.monotonic() - started < 10
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    for args in ([*export, server], ["grid", "--dry-run", "--mlflow", server]):
        code, out, err = cli(*args)
        assert (code, err.count("\n")) == (2, 1) and "pip install 'cvmf-ray[mlflow]'" in err, (args, err)


def test_a_tuning_study_s_trials_nest_under_a_run_per_study_and_the_report_shows_them(server, cli, tmp_path):
    args = ["grid", "--methods", "original,retrain,gradient_ascent", "--tune", "gradient_ascent", "--tune-trials", "3",
            "--seeds", "0,1", "--quant", "fp32", "--epochs", "3", "--results-dir", tmp_path]  # fmt: skip
    assert cli(*args)[0] == 0
    run = tmp_path / "default"
    for _ in range(2):  # the second export sends nothing again
        code, out, err = cli("export", run, "--mlflow", server, "--experiment", "tuning")
        assert code == 0 and "tuning trials:" in out, err
    assert "tuning trials: 0 new, 0 updated" in out
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("tuning").experiment_id], max_results=1000)
    by_key = {r.data.tags["cvmf_ray.key"]: r for r in runs if "cvmf_ray.key" in r.data.tags}
    grid = next(r for r in runs if PARENT not in r.data.tags)
    trials = pq.read_table(run / "tuning.parquet").to_pylist()
    study = by_key[f"study/{trials[0]['study']}"]
    assert study.data.tags[PARENT] == grid.info.run_id
    assert len(runs) == 1 + 1 + 3 + len(pq.read_table(run / "results.parquet"))  # grid, study, trials, rows
    for trial in trials:
        logged = by_key[f"study/{trial['study']}/trial/{trial['trial']}"]
        assert logged.data.tags[PARENT] == study.info.run_id and logged.data.tags["cvmf_ray.status"] == "ok"
        assert logged.data.metrics["objective"] == pytest.approx(trial["objective"])
        assert json.loads(logged.data.params["hparams"]) == json.loads(trial["hparams"])
    tuned = [r for r in runs if r.data.params.get("method") == "gradient_ascent@tuned"]
    assert len(tuned) == 1 and tuned[0].data.tags[PARENT] == grid.info.run_id
    figures = {a.path for a in client.list_artifacts(grid.info.run_id, "figures")}
    assert "figures/tuning.png" in figures
