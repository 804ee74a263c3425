"""Shared test helpers: run the real CLI in-process, one shared reference run, process-group kills."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cvmf_ray.cli import run_cli
from cvmf_ray.config import load_config
from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.models import create_model
from cvmf_ray.schema import TIMING_COLUMNS
from cvmf_ray.stages import train

FAST = ["--epochs", "6"]  # the default grid, fewer epochs: every test that compares tables uses these
TRAIN_ONLY = ["--methods", "original", "--quant", "fp32", "--epochs", "60"]  # one long training cell


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits, as every digits cell loads them."""
    return DATASETS.get("digits").load_data("unused")


def train_small_cnn(digits, epochs: int | None = 6, exclude=None):
    """small_cnn trained on digits with digits' own recipe, `epochs` long (None: the recipe's 30), seed 0."""
    torch.manual_seed(0)
    recipe = load_config(epochs=epochs).recipe_for("digits")
    return train(create_model("small_cnn", 1, 10), digits, recipe, seed=0, exclude=exclude)[0]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many small trainings (`pytestmark = pytest.mark.usefixtures(...)`): on a
    shared 2-core machine several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def original(digits):
    """The model that saw class 0 (6 epochs)."""
    return train_small_cnn(digits)


@pytest.fixture(scope="module")
def retrain(digits):
    """The model trained without class 0 (6 epochs)."""
    return train_small_cnn(digits, exclude=forget_mask(ForgetSpec("class", 0), digits.train_y, seed=0))


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit code, stdout, stderr), through the same entry point as the console script."""

    def run(*args: str):
        code = run_cli([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """One uninterrupted run of the default grid: the reference every resumed run must reproduce. Run as the
    README's main command is, with the relative default `--results-dir results`: every artifact must land
    there, not in the per-trial working directories where Ray runs the trials."""
    folder, cwd = tmp_path_factory.mktemp("reference"), os.getcwd()
    os.chdir(folder)
    try:
        assert run_cli(["grid", *FAST]) == 0
    finally:
        os.chdir(cwd)
    run = folder / "results" / "default"
    cells = json.loads((run / "grid.json").read_text())["cells"]
    assert {p.name for p in (run / "artifacts").iterdir()} == {c["key"] for c in cells}
    return run


@pytest.fixture(scope="session")
def long_training_reference(tmp_path_factory) -> Path:
    """One uninterrupted run of a single long training cell: what every interrupted training must reproduce."""
    results = tmp_path_factory.mktemp("long")
    assert run_cli(["grid", "--results-dir", str(results), *TRAIN_ONLY]) == 0
    return results / "default"


def train_checkpoints(run_dir: Path) -> list[Path]:
    return list((run_dir / "checkpoints").glob("*/epoch-*.pt"))


@pytest.fixture
def copy_of_default_run(default_run, tmp_path) -> Path:
    """A private copy of the finished reference run, for tests that damage it."""
    shutil.copytree(default_run, tmp_path / "default", ignore=shutil.ignore_patterns("tune"))
    return tmp_path / "default"


def metas(run_dir: Path) -> dict[str, dict]:
    """Every finished cell's meta.json in a run directory, by key."""
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("artifacts/*/meta.json")}


def free_port() -> int:
    """A TCP port nothing listens on (for now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comparable(table: Path | pa.Table) -> list[dict]:
    """Rows without the wall-clock columns, the only ones allowed to differ between identical runs."""
    rows = (pq.read_table(table) if isinstance(table, Path) else table).to_pylist()
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def session_processes(driver: subprocess.Popen, pattern: str = "") -> list[str]:
    """PIDs of the live processes in `driver`'s session (the Ray instance it started included) whose command line
    contains `pattern`: other Ray instances on the machine are left alone, exited ones (zombies) do not count."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) + [""] for line in listing.splitlines()]
    return [
        pid
        for pid, sid, stat, args, *_ in rows
        if sid == str(driver.pid) and not stat.startswith("Z") and pattern in args
    ]


def start_driver(*args: str, log: Path) -> subprocess.Popen:
    """`cvmf-ray ARGS` as a separate driver process in its own session (Ray's processes join it)."""
    command = [sys.executable, "-m", "cvmf_ray", *map(str, args)]
    with open(log, "w") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    driver.log = log
    return driver


def wait_for(condition, driver: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll `condition` while `driver` runs; fail at once (with its output) if the driver exits first."""
    deadline = time.time() + timeout
    while not condition():
        if driver.poll() is not None:
            output = driver.log.read_text()[-3000:]
            raise AssertionError(f"the driver exited ({driver.returncode}) before {what}:\n{output}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_session(driver: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session: a crash, not a shutdown."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
    for pid, sid in zip(listing[::2], listing[1::2], strict=True):
        if int(sid) == driver.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
