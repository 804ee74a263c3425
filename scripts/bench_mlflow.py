"""Time `cvmf-ray export` of a 10,000-row results table into a real local MLflow server (issue 24: seconds).

    python scripts/bench_mlflow.py              # mlflow server's default workers
    python scripts/bench_mlflow.py --workers 2

The table is tests/synthetic.py's (10,021 rows in the real results schema: 10,000 ok, 1 n = 1, 10 failed, 10
pending), its NaNs made nulls as in a table a run writes. The server is `mlflow server` with a sqlite store in a
temporary folder, on this machine, as tests/test_mlflow.py starts it. The first export creates every run (a
nested run per row: metrics, params and tags in one log_batch, its evaluation JSON, its status) and the report's
figures on the grid's run; the second finds them all (one search) and sends nothing. Both are
`cvmf_ray.tracking.export`, what the command runs once it has read the table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.*
from cvmf_ray.results import cpu_name  # noqa: E402
from cvmf_ray.schema import RUN_METADATA  # noqa: E402
from cvmf_ray.store import RunStore  # noqa: E402
from cvmf_ray.tracking import export  # noqa: E402
from tests.mlflow_server import mlflow_server  # noqa: E402
from tests.synthetic import synthetic_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="mlflow server --workers (default: its own, 4)")
    workers = parser.parse_args().workers
    table = synthetic_table()
    info = json.loads(table.schema.metadata[RUN_METADATA])
    for i, column in enumerate(table.columns):  # NaN as null, as results.py writes a table
        if pa.types.is_floating(column.type):
            table = table.set_column(i, table.field(i), pc.if_else(pc.is_nan(column), None, column))
    table = table.replace_schema_metadata({RUN_METADATA: json.dumps({**info, "grid_digest": "bench-mlflow"})})
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}; Python "
          f"{platform.python_version()}, mlflow {importlib.metadata.version('mlflow')}; server: sqlite, "
          f"{workers or 'default (4)'} workers, on this machine")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder, mlflow_server(Path(folder), workers) as uri:
        store = RunStore(str(Path(folder) / "bench"))
        print("export  rows    seconds  rows/s")
        for name in ("first", "second"):
            started = time.perf_counter()
            said = export(store, table, uri, "bench")
            seconds = time.perf_counter() - started
            print(f"{name:7} {table.num_rows:6} {seconds:8.1f} {table.num_rows / seconds:7.0f}   # {said}")


if __name__ == "__main__":
    main()
