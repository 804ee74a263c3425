"""A run survives the people who run it (issue 11): Ctrl-C and SIGTERM, a second driver, a torn checkpoint, a
narrowed grid. Real drivers in their own process sessions; every story ends with the uninterrupted run's table.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

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


def interrupt(driver: subprocess.Popen, signum: int) -> float:
    """Send `signum` to the driver; returns how long it took to exit."""
    sent = time.monotonic()
    os.kill(driver.pid, signum)
    driver.wait(timeout=60)
    return time.monotonic() - sent


def test_sigterm_and_ctrl_c_stop_promptly_keep_everything_and_the_same_command_resumes(
    long_training_reference, tmp_path, cli
):
    run = tmp_path / "default"
    args = ("grid", "--results-dir", tmp_path, *TRAIN_ONLY)
    for signum in (signal.SIGTERM, signal.SIGINT):
        earlier = set(train_checkpoints(run))
        driver = start_driver(*args, log=tmp_path / "driver.log")
        wait_for(lambda earlier=earlier: set(train_checkpoints(run)) - earlier, driver, "a new training checkpoint")
        seconds = interrupt(driver, signum)
        output = driver.log.read_text()
        try:
            assert driver.returncode == 128 + signum, output
            assert seconds < 15, seconds
            last = output.strip().splitlines()[-1]
            assert last.startswith(f"interrupted by {signal.Signals(signum).name}: ") and "cells are finished" in last
            assert "run the same command to resume" in last
            assert "Traceback" not in output and "***" not in output and "PC: @" not in output  # no stack dumps
            assert not session_processes(driver)  # no Ray process left behind
            assert not (run / "lock.json").exists()
            assert pq.read_table(run / "results.parquet").column("status").to_pylist() == ["pending"]
        finally:
            kill_session(driver)
    code, out, _ = cli(*args)
    assert code == 0
    assert "resuming training from its epoch" in out
    (train,) = [m for m in metas(run).values() if m["stage"] == "train"]
    assert train["metrics"]["resumed_from_epoch"] > 0
    assert comparable(run / "results.parquet") == comparable(long_training_reference / "results.parquet")


def test_a_second_driver_on_the_same_run_is_refused_and_a_dead_ones_lock_is_taken_over(default_run, tmp_path):
    command = [sys.executable, "-m", "cvmf_ray", "grid", "--results-dir", str(tmp_path), *FAST]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))  # fmt: skip
    outcomes = sorted([(p.wait(timeout=600), *p.communicate()) for p in (first, second)], key=lambda o: o[0])
    (code_ok, out_ok, _), (code_refused, _, refused) = outcomes
    assert code_ok == 0, out_ok
    assert code_refused == 2 and refused.strip().count("\n") == 0
    assert "is in use by another cvmf-ray driver (host " in refused and ", pid " in refused and "since " in refused
    assert comparable(tmp_path / "default/results.parquet") == comparable(default_run / "results.parquet")

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease = {"owner": "x", "host": os.uname().nodename, "pid": gone.pid, "started": 1.0, "since": 1.0, "heartbeat": 1.0}
    (tmp_path / "default/lock.json").write_text(json.dumps(lease))
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over run {str(tmp_path / 'default')!r} from a driver that is gone" in rerun.stdout
    assert not (tmp_path / "default/lock.json").exists()


def test_an_unreadable_epoch_checkpoint_is_reported_once_and_training_resumes_from_the_one_before(
    long_training_reference, tmp_path, cli
):
    run = tmp_path / "default"
    driver = start_driver("grid", "--results-dir", tmp_path, *TRAIN_ONLY, log=tmp_path / "driver.log")
    wait_for(lambda: len(train_checkpoints(run)) >= 2, driver, "two training checkpoints")
    kill_session(driver)
    older, newest = sorted(train_checkpoints(run))[-2:]
    newest.write_bytes(os.urandom(newest.stat().st_size))  # torn: same size, random bytes

    code, out, _ = cli("grid", "--results-dir", tmp_path, *TRAIN_ONLY)
    assert code == 0
    assert out.count(f"checkpoint {newest.name} of training cell") == 1 and "unreadable" in out
    (train,) = [m for m in metas(run).values() if m["stage"] == "train"]
    assert train["metrics"]["resumed_from_epoch"] == int(older.stem.split("-")[1])
    assert comparable(run / "results.parquet") == comparable(long_training_reference / "results.parquet")


def test_a_narrowed_grid_keeps_the_table_and_evaluations_in_step_and_widening_back_recomputes_nothing(
    default_run, copy_of_default_run, cli
):
    run = copy_of_default_run
    before = metas(run)
    code, _, _ = cli("grid", "--results-dir", run.parent, *FAST, "--quant", "fp32,fp16,bf16")
    assert code == 0
    rows = pq.read_table(run / "results.parquet").to_pylist()
    assert len(rows) == 15 and {r["quant"] for r in rows} == {"fp32", "fp16", "bf16"}
    assert {p.stem for p in (run / "evaluations").glob("*.json")} == {r["key"] for r in rows}

    code, out, _ = cli("grid", "--results-dir", run.parent, *FAST)
    assert code == 0 and "to run" not in out  # the int8 cells' artifacts were kept: nothing is recomputed
    assert metas(run) == before
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")
    assert len(list((run / "evaluations").glob("*.json"))) == 20
