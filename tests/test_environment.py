"""When the environment is wrong (issue 15): one line naming the bad thing, exit 2, within its time bound,
nothing written, never a hang or "internal error". Real processes, a real unused port, a real non-Ray server,
real URIs (a local S3-compatible server that rejects unknown credentials), real damaged files.
"""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

S3_ENV = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud for creds


@pytest.fixture(scope="module")
def not_ray():
    """An HTTP server on loopback: something listens, but it is no Ray cluster."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def strict_s3(tmp_path_factory):
    """An S3-compatible server (moto) with one bucket that accepts only known credentials."""
    port = free_port()
    env = {**os.environ, **S3_ENV, "INITIAL_NO_AUTH_ACTION_COUNT": "1"}  # one anonymous call: making the bucket
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline, "moto did not start"
            time.sleep(0.2)
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="x", aws_secret_access_key="x",
                 region_name="us-east-1").create_bucket(Bucket="runs")  # fmt: skip
    yield f"127.0.0.1:{port}"
    server.kill()


def write_plugin(folder: Path) -> None:
    (folder / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n\ndef fn(model, data, params):\n    pass\n")


def damaged_fashionmnist(root: Path) -> Path:
    """Fashion-MNIST laid out with a train-images file whose magic number is wrong."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + (60000).to_bytes(4, "big") + b"\x00" * 64)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00" * 16)
    return bad


def damaged_run(folder: Path, damage: str) -> Path:
    run = folder / damage
    run.mkdir(parents=True)
    (run / "grid.json").write_text('{"cells": [' if damage == "grid" else '{"counts": {}, "cells": []}')
    (run / "results.parquet").write_bytes(b"PAR1 not a parquet file")
    return run


def cases(tmp: Path, not_ray: str, strict_s3: str) -> list:
    """(command line, environment, what stderr names, time bound in seconds)."""
    unreachable = f"s3://runs/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    rejected = f"s3://runs/x?endpoint_override={strict_s3}&scheme=http"
    bogus = {**S3_ENV, "AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "nothing"}
    out = ["--results-dir", str(tmp / "out")]
    (tmp / "a_file").write_text("not a folder")
    (tmp / "runs" / "empty").mkdir(parents=True)
    refused = ["grid", "--gpus", "0", "--gpus-per-trial", "0.5", "--methods", "original", "--quant", "fp32"]
    return [
        (["grid", "--address", f"127.0.0.1:{free_port()}", *out], {}, "cannot join the Ray cluster at '127.0.0.1:", 30),
        (["grid", "--address", not_ray, *out], {}, f"cannot join the Ray cluster at '{not_ray}'", 30),
        (["grid", "--results-dir", ""], {}, "results location '' is empty", 15),
        (["grid", "--results-dir", "file://out"], {}, "'file://out' is a relative file URI", 15),
        (["grid", "--results-dir", "nosuchscheme://bucket/x"], {}, "cannot be opened", 15),
        (["grid", "--results-dir", str(tmp / "a_file" / "runs")], {}, "is a file, not a directory", 15),
        (["grid", "--results-dir", unreachable], S3_ENV, "is not usable", 30),
        (["grid", "--results-dir", rejected], bogus, "is not usable", 30),
        (["status", unreachable.replace("/x?", "/x/default?")], S3_ENV, "cannot be read", 30),
        (["status", ""], {}, "results location '' is empty", 15),
        (["grid", "--datasets", "fashionmnist", "--data-root", str(tmp / "data"), *out], {},
         "FashionMNIST/raw/", 30),
        (["grid", "--methods", "exits_at_import:fn", *out], {"PYTHONPATH": str(tmp)},
         "cannot import module 'exits_at_import' for method 'exits_at_import:fn': it calls sys.exit(0)", 15),
        (["grid", "--cpus", str((os.cpu_count() or 1) + 64), *out], {}, "asks for more CPUs than this machine has", 15),
        # refused once Ray is up, after the lock made the run directory: what this invocation made is removed
        # (out/ and out/default), a run directory that existed before (runs/empty) is kept
        ([*refused, *out], {}, "--gpus-per-trial 0.5 cannot be satisfied: the largest node has 0 GPU(s)", 60),
        ([*refused, "--results-dir", str(tmp / "runs"), "--name", "empty"], {}, "--gpus-per-trial 0.5", 60),
        (["grid", "--name", "", *out], {}, "--name", 15),
        (["status", str(damaged_run(tmp / "runs", "grid"))], {}, "grid.json is damaged", 15),
        (["report", str(tmp / "runs" / "grid")], {}, "grid.json is damaged", 15),
    ]  # fmt: skip


def test_each_environment_fault_is_one_line_and_exit_2_within_its_bound(tmp_path, not_ray, strict_s3):
    write_plugin(tmp_path)
    damaged_fashionmnist(tmp_path / "data")
    table = cases(tmp_path, not_ray, strict_s3)
    before = {p for p in tmp_path.rglob("*")}
    for argv, env, named, bound in table:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "cvmf_ray", *argv], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=bound + 30, cwd=tmp_path)  # fmt: skip
        seconds = time.monotonic() - started
        assert run.returncode == 2, (argv, run.stdout, run.stderr)
        assert named in run.stderr, (argv, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, (argv, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout and "internal error" not in run.stderr, (argv, run.stderr)
        assert seconds < bound, (argv, seconds)
    assert {p for p in tmp_path.rglob("*")} == before  # no case wrote anything


def test_results_on_a_damaged_table_say_which_file_and_rebuild_it_from_the_runs_files(copy_of_default_run, cli):
    run = copy_of_default_run
    (run / "results.parquet").write_bytes(b"PAR1 damaged")
    code, out, err = cli("results", run, "--format", "csv")
    assert code == 0
    assert err.startswith("results.parquet is damaged (") and err.count("\n") == 1
    assert "rebuilt 20 finished rows of 20 from evaluations/ and artifacts/" in err
    assert len(out.strip().splitlines()) == 21  # header + every row
    assert (run / "results.parquet").read_bytes() == b"PAR1 damaged"  # a read-only command writes nothing
