"""A real multi-node Ray cluster on one machine (`ray start --head` + `ray start --address` with declared
GPUs), joined with `--address`, with the run directory given as a `file://` URI.
"""

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FAST, comparable, free_port, metas

RAY = str(Path(sys.executable).parent / "ray")


def ray_cli(*args: str, env: dict) -> None:
    subprocess.run([RAY, *args], env=env, check=True, capture_output=True, timeout=180)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """start(head_gpus, [(worker_cpus, worker_gpus)]) -> address; everything is stopped afterwards."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray 2.60 clusters require token auth by default
    (tmp_path / "cluster_methods.py").write_text(
        textwrap.dedent('''
        import os, time, uuid
        from pathlib import Path

        def nap(model, data, params):
            """A stand-in for a GPU-heavy method: holds its trial for two seconds."""
            time.sleep(2)
            return model

        def meet(model, data, params):
            """Waits until eight of its kind run at once (120 s at most): proves eight concurrent trials."""
            hall = Path(os.environ["CVMF_TEST_HALL"])
            (hall / uuid.uuid4().hex).touch()
            deadline = time.time() + 120
            while len(list(hall.iterdir())) < 8:
                if time.time() > deadline:
                    raise RuntimeError(f"only {len(list(hall.iterdir()))} of 8 trials ran at once")
                time.sleep(0.1)
            return model
        ''')
    )
    (tmp_path / "hall").mkdir()
    monkeypatch.setenv("CVMF_TEST_HALL", str(tmp_path / "hall"))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    monkeypatch.syspath_prepend(str(tmp_path))

    def start(head_cpus: int, head_gpus: int, workers=()) -> str:
        port = free_port()
        common = ["--disable-usage-stats"]
        ray_cli("start", "--head", f"--port={port}", f"--num-cpus={head_cpus}", f"--num-gpus={head_gpus}",
                "--include-dashboard=false", *common, env=env)  # fmt: skip
        for cpus, gpus in workers:
            ray_cli(
                "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", *common, env=env
            )
        return f"127.0.0.1:{port}"

    yield start
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_two_node_grid_places_gpu_trials_on_the_gpu_node_and_matches_single_node(cluster, default_run, tmp_path, cli):
    address = cluster(1, 0, workers=[(2, 2)])  # the head has no GPU; the worker declares two
    uri = f"file://{tmp_path}/shared"
    code, out, err = cli("grid", "--address", address, "--results-dir", uri, *FAST)
    assert code == 0, out + err
    run = tmp_path / "shared/default"
    cells = metas(run)
    head_nodes = {m["placement"]["node_id"] for m in cells.values() if not m["placement"]["gpu_ids"]}
    assert not head_nodes  # every trial held a GPU, so every one ran on the GPU node
    sources = [m["placement"]["parent_read_from"] for m in cells.values() if m["parent"] is not None]
    assert set(sources) <= {"object store", "storage"} and "object store" in sources  # the GPU node's own cache
    assert comparable(run / "results.parquet") == comparable(default_run / "results.parquet")


def test_fractional_gpu_trials_spread_over_every_declared_gpu(cluster, tmp_path, cli):
    address = cluster(8, 4)  # one node, 8 CPUs and 4 declared GPUs
    code, out, err = cli(
        "grid", "--address", address, "--results-dir", tmp_path, "--gpus-per-trial", "0.5",
        "--methods", "cluster_methods:meet", "--forget-classes", "0,1,2,3,4,5,6,7", "--quant", "fp32", "--epochs", "1",
    )  # fmt: skip
    assert code == 0, out + err
    meetings = [m for m in metas(tmp_path / "default").values() if m["stage"] == "unlearn"]
    per_gpu = collections.Counter(gpu for m in meetings for gpu in m["placement"]["gpu_ids"])
    assert per_gpu == {"0": 2, "1": 2, "2": 2, "3": 2}  # eight at once, two per GPU: not piled onto GPU 0


def test_joining_a_token_cluster_without_the_token_mode_is_one_clear_error(cluster, tmp_path):
    address = cluster(1, 0)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # a fresh shell, as a user has it
    command = [sys.executable, "-m", "cvmf_ray", "grid", "--address", address, "--results-dir", str(tmp_path / "out")]
    joined = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert joined.returncode == 2
    assert joined.stderr.strip().splitlines() == [joined.stderr.strip()]  # exactly one line
    assert "RAY_AUTH_MODE=token" in joined.stderr
    assert not (tmp_path / "out").exists()
