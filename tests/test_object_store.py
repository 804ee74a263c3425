"""A run whose results live on an object store: a real S3 API (moto) on loopback, reached through pyarrow's S3
filesystem as an `s3://` URI. Artifacts, evaluations, the table, Tune's state and the lock all go there."""

import io
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAST, comparable

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


@pytest.fixture
def bucket(monkeypatch):
    """An empty bucket `runs` on a fresh S3-compatible server; yields (URI of s3://runs/grids, pyarrow fs)."""
    from moto.server import ThreadedMotoServer

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="runs")
    uri = f"s3://runs/grids?endpoint_override={host}:{port}&scheme=http"
    yield uri, pafs.FileSystem.from_uri(uri)[0]
    server.stop()


def wait_for_object(fs, path: str, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while fs.get_file_info(path).type != pafs.FileType.File:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_a_grid_on_an_object_store_matches_the_local_one_and_its_lock_refuses_a_second_driver(bucket, default_run):
    uri, fs = bucket
    command = [sys.executable, "-m", "cvmf_ray", "grid", "--results-dir", uri, *FAST]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_object(fs, "runs/grids/default/lock.json", first)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stdout + second.stderr
    assert "is in use by another cvmf-ray driver (host " in second.stderr
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, out + err

    run_uri = uri.replace("/grids?", "/grids/default?")
    with fs.open_input_file("runs/grids/default/results.parquet") as table:
        on_s3 = pq.read_table(io.BytesIO(table.read()))
    assert comparable(on_s3) == comparable(default_run / "results.parquet")
    names = {info.path for info in fs.get_file_info(pafs.FileSelector("runs/grids/default", recursive=True))}
    assert "runs/grids/default/lock.json" not in names  # released
    assert not [n for n in names if ".tmp-" in n]  # an object store never sees temporaries: one PUT per file
    assert sum(n.startswith("runs/grids/default/evaluations/") for n in names) == 20

    status = subprocess.run([sys.executable, "-m", "cvmf_ray", "status", run_uri], capture_output=True, text=True)
    assert status.returncode == 0 and "evaluate      20       0        0" in status.stdout
