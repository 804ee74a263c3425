"""Time `cvmf-ray report` on a 10,000-row results table (issue 14: under 10 s).

    python scripts/bench_report.py            # 3 repeats of each table, each in a fresh Python process

The table is tests/synthetic.py's (10 methods x 5 quant modes x 10 forget classes x 20 seeds = 10,000 ok
rows, plus 21 rows that are n = 1, failed or pending), once with a `weight_bits` column and once without
(then the report asks the quant registry). Each repeat is a new process that imports
the report package, reads results.parquet and writes the whole report: report.html, 6 figures as PNG + PDF,
the tables as CSV/Markdown/LaTeX. `total_s` is that process's wall time from start to exit (what a user
waits for), `cpu_s` its CPU time (what the wall time is on an idle core: the work is single-threaded), and
`report_s` the wall time of write_report alone.
"""

import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.synthetic
from tests.synthetic import synthetic_table  # noqa: E402

CHILD = """
import sys, time
from pathlib import Path
import pyarrow.parquet as pq
from cvmf_ray.report import write_report
table = pq.read_table(sys.argv[1])
report = time.perf_counter()
files = write_report(table, Path(sys.argv[2]))
print(f"{table.num_rows} {len(files)} {time.perf_counter() - report:.2f}")
"""


def main(repeats: int = 3) -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"# python {platform.python_version()}; the rest of this machine's load is other jobs: wall times")
    print("weight_bits  rows   files  report_s  total_s  cpu_s")
    with tempfile.TemporaryDirectory() as tmp:
        for column in (True, False):
            source = Path(tmp) / f"results-{column}.parquet"
            pq.write_table(synthetic_table(weight_bits=column), source)
            for repeat in range(repeats):
                cpu = _children_cpu()
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(source), str(Path(tmp) / f"report-{column}-{repeat}")],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                total, cpu = time.perf_counter() - started, _children_cpu() - cpu
                source_of_bits = "column" if column else "registry"
                print(f"{source_of_bits:11}  {out[0]}  {out[1]:>5}  {out[2]:>8}  {total:7.2f}  {cpu:5.2f}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
