"""Fault injection through real processes: killed drivers and trial workers, damaged or malicious
artifacts, a full results disk. Every recovery must end with the reference table, recomputing nothing
that had finished.
"""

import errno
import io
import json
import subprocess

import pyarrow.parquet as pq
import torch

from cvmf_ray.store import RunStore
from tests.conftest import (
    FAST,
    TRAIN_ONLY,
    comparable,
    kill_session,
    metas,
    session_processes,
    start_driver,
    train_checkpoints,
    wait_for,
)


def test_driver_killed_during_training_resumes_from_the_cells_epoch_checkpoint(long_training_reference, tmp_path, cli):
    run = tmp_path / "default"
    driver = start_driver("grid", "--results-dir", tmp_path, *TRAIN_ONLY, log=tmp_path / "driver.log")
    wait_for(lambda: len(train_checkpoints(run)) > 0, driver, "a training checkpoint")
    kill_session(driver)
    assert not metas(run), "training finished before the kill"

    code, out, _ = cli("grid", "--results-dir", tmp_path, *TRAIN_ONLY)
    assert code == 0
    assert "resuming training from its epoch" in out
    (train,) = [m for m in metas(run).values() if m["stage"] == "train"]
    assert train["metrics"]["resumed_from_epoch"] > 0  # not from scratch
    assert not train_checkpoints(run)  # a finished cell keeps no checkpoint
    assert comparable(run / "results.parquet") == comparable(long_training_reference / "results.parquet")


def test_a_trial_killed_mid_training_is_retried_by_tune_from_the_last_epoch(long_training_reference, tmp_path):
    run = tmp_path / "default"
    driver = start_driver("grid", "--results-dir", tmp_path, *TRAIN_ONLY, log=tmp_path / "driver.log")
    wait_for(lambda: len(train_checkpoints(run)) > 0, driver, "a training checkpoint")
    victims = session_processes(driver, "ray::ImplicitFunc")  # the Tune trial, training in its own process
    assert len(victims) == 1, victims
    subprocess.run(["kill", "-9", *victims], check=True)
    try:
        assert driver.wait(timeout=300) == 0
    finally:
        kill_session(driver)
    (train,) = [m for m in metas(run).values() if m["stage"] == "train"]
    assert train["metrics"]["resumed_from_epoch"] > 0
    assert comparable(run / "results.parquet") == comparable(long_training_reference / "results.parquet")


def test_a_trial_process_killed_after_an_evaluation_is_replaced_and_its_cells_rerun(default_run, tmp_path):
    run = tmp_path / "default"
    driver = start_driver("grid", "--results-dir", tmp_path, *FAST, log=tmp_path / "driver.log")
    # the first evaluation comes early (most wait for unlearning and quantization): the process that ran it
    # is killed with 19 evaluations of the grid still to run
    wait_for(lambda: any(m["stage"] == "evaluate" for m in metas(run).values()), driver, "an evaluation")
    last = max((m for m in metas(run).values() if m["stage"] == "evaluate"), key=lambda m: m["interval"][1])
    evaluator = str(last["placement"]["pid"])
    assert evaluator in session_processes(driver, "ray::ImplicitFunc")
    subprocess.run(["kill", "-9", evaluator], check=True)
    try:
        assert driver.wait(timeout=300) == 0
    finally:
        kill_session(driver)
    # the kill was seen (Tune records the death) and recovered from: exit 0 above, the reference table below
    assert any("actor died" in error.read_text() for error in (run / "tune").rglob("error.txt"))
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")


def test_driver_killed_midway_and_while_writing_results(default_run, tmp_path, cli):
    run = tmp_path / "default"
    finished = {}
    for kill_point in (
        lambda: any(m["stage"] == "quantize" for m in metas(run).values()),  # while cells stream
        lambda: any((run / "evaluations").glob("*")),  # while evaluations are being written
    ):
        driver = start_driver("grid", "--results-dir", tmp_path, *FAST, log=tmp_path / "driver.log")
        wait_for(kill_point, driver, "the kill point")
        kill_session(driver)
        now = metas(run)
        assert all(now[key] == meta for key, meta in finished.items())  # nothing finished was recomputed
        finished = now
    code, _, _ = cli("grid", "--results-dir", tmp_path, *FAST)
    assert code == 0
    assert all(metas(run)[key] == meta for key, meta in finished.items())
    rows = comparable(run / "results.parquet")
    assert len({row["key"] for row in rows}) == len(rows) == 20  # no duplicate rows
    assert rows == comparable(default_run / "results.parquet")
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name and "tune" not in p.parts]  # no half-written file


def _cells(run, stage: str, method: str | None = None) -> list[str]:
    return [
        key
        for key, meta in metas(run).items()
        if meta["stage"] == stage and (method is None or meta["params"].get("method") == method)
    ]


def _original(run) -> str:
    (key,) = [k for k, m in metas(run).items() if m["stage"] == "train" and m["params"]["exclude"] is None]
    return key


def test_damaged_artifacts_are_detected_and_recomputed(copy_of_default_run, default_run, cli):
    run = copy_of_default_run
    original = run / "artifacts" / _original(run)
    weights = bytearray((original / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF  # same size, wrong content: only the SHA-256 can tell
    (original / "model.safetensors").write_bytes(bytes(weights))
    for key in _cells(run, "unlearn"):  # so the original is read again
        RunStore(str(run)).discard_artifact(key)
    (run / "artifacts" / _cells(run, "quantize", "finetune")[0] / "meta.json").unlink()  # missing meta
    (retrain,) = [k for k, m in metas(run).items() if m["stage"] == "train" and m["params"]["exclude"]]
    truncated = run / "artifacts" / retrain / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])  # truncated
    for key in _cells(run, "quantize", "retrain"):  # so the retrain is read again
        RunStore(str(run)).discard_artifact(key)
    torn = _cells(run, "evaluate")[0]
    (run / "artifacts" / torn / "meta.json").write_text('{"key": ')  # torn JSON ...
    (run / "results.parquet").unlink()  # ... of a row no table holds any more: it must be read, and recomputed

    code, out, _ = cli("grid", "--results-dir", run.parent, *FAST)
    assert code == 0
    assert "does not match its recorded SHA-256; recomputing it" in out
    assert json.loads((run / "artifacts" / torn / "meta.json").read_text())["key"] == torn
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")


class Payload:
    """A pickle that runs code when unpickled: it must never be."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_never_executed(copy_of_default_run, default_run, tmp_path, cli):
    import hashlib

    run = copy_of_default_run
    original = run / "artifacts" / _original(run)
    buffer = io.BytesIO()
    torch.save({"conv.weight": Payload(str(tmp_path / "executed"))}, buffer)
    evil = buffer.getvalue()
    (original / "model.safetensors").write_bytes(evil)
    meta = json.loads((original / "meta.json").read_text())  # an attacker controls the meta too
    meta.update(tensor_sha256=hashlib.sha256(evil).hexdigest(), tensor_bytes=len(evil))
    (original / "meta.json").write_text(json.dumps(meta))
    for key in _cells(run, "unlearn"):
        RunStore(str(run)).discard_artifact(key)

    code, out, _ = cli("grid", "--results-dir", run.parent, *FAST)
    assert code == 0
    assert "is not a valid safetensors file" in out and "recomputing it" in out
    assert not (tmp_path / "executed").exists()
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")


class FullDisk:
    """A pyarrow filesystem that runs out of space after `budget` bytes (ENOSPC mid-write)."""

    def __init__(self, fs, budget: int) -> None:
        self.fs, self.budget = fs, budget

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_output_stream(self, path):
        return _LimitedStream(self.fs.open_output_stream(path), self)


class _LimitedStream:
    def __init__(self, stream, disk: FullDisk) -> None:
        self.stream, self.disk = stream, disk

    def write(self, data: bytes) -> None:
        if len(data) > self.disk.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.budget -= len(data)
        self.stream.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


def test_a_full_results_disk_stops_cleanly_and_a_rerun_completes(copy_of_default_run, default_run, cli, monkeypatch):
    run = copy_of_default_run
    (run / "results.parquet").unlink()
    for evaluation in (run / "evaluations").glob("*.json"):
        evaluation.unlink()
    room = (run / "grid.json").stat().st_size + 3 * 4096  # grid.json and a few evaluations fit, no more
    real_init = RunStore.__init__

    def init_on_a_small_disk(self, uri):
        real_init(self, uri)
        self.fs = FullDisk(self.fs, room)

    monkeypatch.setattr(RunStore, "__init__", init_on_a_small_disk)
    code, out, _ = cli("grid", "--results-dir", run.parent, *FAST)
    assert code == 1
    assert "results storage is full" in out and "rerun the same command to resume" in out
    assert not (run / "results.parquet").exists()
    for evaluation in (run / "evaluations").glob("*"):
        json.loads(evaluation.read_text())  # whole files only, and no temporaries
        assert evaluation.suffix == ".json"

    monkeypatch.setattr(RunStore, "__init__", real_init)
    code, _, _ = cli("grid", "--results-dir", run.parent, *FAST)
    assert code == 0
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")
    assert len(list((run / "evaluations").glob("*.json"))) == pq.read_table(run / "results.parquet").num_rows


def test_local_ray_starts_without_a_dashboard():
    import ray

    from cvmf_ray.config import load_config
    from cvmf_ray.runner import connect

    connect(load_config(cpus=1), verbose=False)
    try:
        assert not ray._private.worker.global_worker.node.address_info.get("webui_url")
    finally:
        ray.shutdown()
