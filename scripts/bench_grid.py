"""Wall time of a grid run vs the time spent inside stage functions: Ray's overhead share.

    python scripts/bench_grid.py                 # the embedded default grid
    python scripts/bench_grid.py -- --epochs 60  # anything after -- goes to `cvmf-ray grid`

Stage time is the union of the wall-clock intervals during which at least one stage function ran
(recorded in every artifact's meta.json), so two trials running side by side are not counted twice.
Overhead share = (wall - stage time) / wall; wall includes Ray's start and shutdown.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    results = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    command = [shutil.which("cvmf-ray") or "cvmf-ray", "grid", "--results-dir", str(results), *extra]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"grid failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    intervals: dict[str, list] = {}
    for meta_file in results.glob("*/artifacts/*/meta.json"):
        meta = json.loads(meta_file.read_text())
        intervals.setdefault(meta["stage"], []).append(tuple(meta["interval"]))
    stage_time = union_seconds([i for spans in intervals.values() for i in spans])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: cvmf-ray {' '.join(command[1:])}")
    for stage, spans in intervals.items():
        summed = sum(b - a for a, b in spans)
        print(f"  {stage:9} {len(spans):3} cells, busy {union_seconds(spans):6.2f} s, summed {summed:6.2f} s")
    share = (wall - stage_time) / wall
    print(f"wall {wall:.1f} s, inside stage functions {stage_time:.1f} s, Ray overhead share {share:.1%}")
    shutil.rmtree(results)


if __name__ == "__main__":
    main()
