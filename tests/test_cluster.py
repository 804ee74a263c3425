"""A real multi-node Ray cluster on one machine (`ray start --head` + `ray start --address` with declared
GPUs), joined with `--address`, with the run directory given as a `file://` URI. Every cluster a test starts is
stopped process by process: never with `ray stop`, which ends every Ray on the machine (a user's study too).
"""

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import FAST, comparable, free_port, metas

RAY = str(Path(sys.executable).parent / "ray")


class RayCluster:
    """A Ray cluster on this machine that a test starts with `ray start` and stops, and nothing else it stops.

    Its nodes share a temp dir of its own (short, under /tmp: Ray's unix socket paths inside it must stay under
    107 characters), and every `ray start` runs in a session of its own, which the daemons it leaves behind and
    the workers their raylet forks keep (Ray never calls setsid). Its processes are the live ones in those
    sessions, or whose command line names its temp dir (the GCS, the raylets, the monitors name their session
    dir in it), and all their descendants: what `ray stop` would end, but of this cluster only."""

    def __init__(self, env: dict):
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="cvmf-ray-", dir="/tmp")
        self.sessions: set[int] = set()

    def ray_start(self, *args: str) -> None:
        command = [RAY, "start", *args, f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        started = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.sessions.add(started.pid)  # its session id: a pid in use as one is not reused while the session lives
        output = started.communicate(timeout=180)[0]
        assert started.returncode == 0, output

    def __call__(self, head_cpus: int, head_gpus: int, workers=()) -> str:
        """Start a head node with these resources and a worker node per (cpus, gpus): the head's address."""
        port = free_port()
        self.ray_start("--head", f"--port={port}", f"--num-cpus={head_cpus}", f"--num-gpus={head_gpus}",
                       "--include-dashboard=false")  # fmt: skip
        for cpus, gpus in workers:
            self.ray_start(f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}")
        return f"127.0.0.1:{port}"

    def processes(self) -> list[psutil.Process]:
        """The cluster's live processes (zombies, already exited, do not count)."""
        roots = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) in self.sessions or any(
                    arg == self.temp_dir or f"{self.temp_dir}/" in arg for arg in process.cmdline()
                ):
                    roots.append(process)
        found = {}
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        return [p for pid, p in found.items() if pid != os.getpid() and alive(p)]

    def stop(self, grace: float = 10) -> None:
        """Stop every process of the cluster in `ray stop`'s order: the raylets (their workers and agents follow
        them), then the rest, the GCS last (all SIGTERMed at once, the raylet lingers 10 s and the GCS over 20 s);
        SIGTERM, then SIGKILL what outlives `grace` seconds; until none is found (one forked meanwhile)."""
        for _ in range(5):
            processes = self.processes()
            if not processes:
                break
            turn = {p: {"raylet": 0, "gcs_server": 2}.get(name(p), 1) for p in processes}
            for bucket in range(3):
                chosen = [p for p in processes if turn[p] == bucket]
                for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
                    for process in chosen:
                        with contextlib.suppress(psutil.Error):
                            process.send_signal(sig)  # psutil refuses a pid reused since it was found
                    chosen = wait_gone(chosen, wait)
        leftover = [f"{p.pid} {name(p)}" for p in self.processes()]
        assert not leftover, f"Ray processes outlived SIGKILL: {leftover}"
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def name(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return process.name()
    return "(exited)"


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for the processes to exit: those still alive then. (Not psutil.wait_procs:
    they are not our children, and one that its parent has not reaped yet stays a zombie.)"""
    deadline = time.monotonic() + timeout
    while (processes := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes


@contextlib.contextmanager
def ray_cluster(env: dict):
    """A RayCluster to start, stopped afterwards: the `cluster` fixture's whole life."""
    cluster = RayCluster(env)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """start(head_cpus, head_gpus, [(worker_cpus, worker_gpus)]) -> address; its processes are stopped afterwards."""
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
    with ray_cluster(env) as started:
        yield started


def test_two_node_grid_places_gpu_trials_on_the_gpu_node_and_matches_single_node(cluster, default_run, tmp_path, cli):
    address = cluster(1, 0, workers=[(2, 2)])  # the head has no GPU; the worker declares two
    uri = f"file://{tmp_path}/shared"
    code, out, err = cli("grid", "--address", address, "--results-dir", uri, *FAST)
    assert code == 0, out + err
    run = tmp_path / "shared/default"
    cells = metas(run)
    head_nodes = {m["placement"]["node_id"] for m in cells.values() if not m["placement"]["gpu_ids"]}
    assert not head_nodes  # every trial held a GPU, so every one ran on the GPU node
    assert {m["placement"]["threads"] for m in cells.values()} == {1}  # on GPUs no trial takes more cores
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


def test_a_lone_training_takes_the_free_cores_of_one_node_never_more_than_a_node_has(cluster, tmp_path, cli,
                                                                                      monkeypatch):  # fmt: skip
    monkeypatch.setattr("cvmf_ray.runner.WIDE_MIN_WORK", 0)  # digits' cells are too short to widen: the rule is checked
    address = cluster(1, 0, workers=[(2, 0)])  # 3 CPUs in the cluster, at most 2 on one node
    code, out, err = cli("grid", "--address", address, "--results-dir", tmp_path, "--methods", "original",
                         "--quant", "fp32", "--epochs", "2")  # fmt: skip
    assert code == 0, out + err
    cells = metas(tmp_path / "default")
    train = next(m for m in cells.values() if m["stage"] == "train")
    assert train["placement"]["threads"] == 2  # all the worker's cores: 3 are free, but no node has 3
    assert max(m["placement"]["threads"] for m in cells.values()) == 2


def test_joining_a_token_cluster_without_the_token_mode_is_one_clear_error(cluster, tmp_path):
    address = cluster(1, 0)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # a fresh shell, as a user has it
    command = [sys.executable, "-m", "cvmf_ray", "grid", "--address", address, "--results-dir", str(tmp_path / "out")]
    joined = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert joined.returncode == 2
    assert joined.stderr.strip().splitlines() == [joined.stderr.strip()]  # exactly one line
    assert "RAY_AUTH_MODE=token" in joined.stderr
    assert not (tmp_path / "out").exists()


def test_the_teardown_stops_its_own_cluster_and_leaves_another_ray_on_the_machine_running(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    env = dict(os.environ)
    study = RayCluster(env)  # a user's study, running beside the tests
    try:
        study_address = study(1, 0)
        theirs = study.processes()
        assert {"gcs_server", "raylet"} <= {p.name() for p in theirs}
        with ray_cluster(env) as ours:  # the `cluster` fixture's own start and teardown
            ours(1, 0, workers=[(1, 0)])
            mine = ours.processes()
            assert [p.name() for p in mine].count("raylet") == 2 and not {p.pid for p in mine} & {p.pid for p in theirs}
        assert not [p for p in mine if alive(p)] and not ours.processes() and not os.path.exists(ours.temp_dir)
        assert [p for p in theirs if not alive(p)] == []
        status = subprocess.run([RAY, "status", f"--address={study_address}"], env=env, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert status.returncode == 0 and "1.0 CPU" in status.stdout, status.stdout + status.stderr
    finally:
        study.stop()
    assert not [p for p in theirs if alive(p)]
