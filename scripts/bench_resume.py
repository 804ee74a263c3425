"""Time to resume a finished ~100-cell grid with nothing left to do (target: at most 10 s).

    python scripts/bench_resume.py

Runs the grid once to completion (3 seeds x 3 forget classes x {original, retrain, finetune} x
{fp32, fp16}: 102 cells), then times the same command again as a user would type it.
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

GRID = ["--seeds", "0,1,2", "--forget-classes", "0,1,2", "--methods", "original,retrain,finetune"]
GRID += ["--quant", "fp32,fp16", "--epochs", "3"]


def main() -> None:
    results = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    command = [shutil.which("cvmf-ray") or "cvmf-ray", "grid", "--results-dir", str(results), *GRID]
    first = subprocess.run(command, capture_output=True, text=True)
    if first.returncode != 0:
        sys.exit(f"the first run failed:\n{first.stdout}\n{first.stderr}")
    cells = len(json.loads((results / "default/grid.json").read_text())["cells"])
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        again = subprocess.run(command, capture_output=True, text=True)
        timings.append(time.perf_counter() - started)
        assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"grid: {cells} cells ({' '.join(GRID)})")
    print(f"resume with nothing to do: {', '.join(f'{t:.2f}' for t in timings)} s (best {min(timings):.2f} s)")
    shutil.rmtree(results)


if __name__ == "__main__":
    main()
