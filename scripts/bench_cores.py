"""Every core busy: the wall time of a grid whose one training cell runs alone, on every core vs on one.

    python scripts/bench_cores.py                  # real Fashion-MNIST, small_cnn, 1 epoch, 3 runs each way
    python scripts/bench_cores.py --repeat 5 -- --epochs 2

The grid is `--datasets fashionmnist --methods original --quant fp32`: one training cell, then its evaluation
and comparison. "one core" is the same grid with `--cpus 1`, which is what cvmf-ray did with it before a lone
training could take the idle cores (one CPU and one torch thread per trial, the other core idle). Runs
alternate between the two so a slow spell of the machine hits both; the medians are the numbers to read.
Fashion-MNIST comes from Debian's dataset-fashion-mnist (`cvmf-ray data --prepare`).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "cvmf_ray"]
GRID = ["--datasets", "fashionmnist", "--methods", "original", "--quant", "fp32", "--epochs", "1"]


def run_grid(results: Path, data: Path, extra: list[str]) -> dict:
    shutil.rmtree(results, ignore_errors=True)
    started = time.perf_counter()
    run = subprocess.run([*CLI, "grid", *GRID, "--data-root", str(data), "--results-dir", str(results), *extra],
                         capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"grid failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    train = next(
        meta
        for path in results.glob("default/artifacts/*/meta.json")
        if (meta := json.loads(path.read_text()))["stage"] == "train"
    )
    progress = [line for line in run.stdout.splitlines() if "img/s" in line]  # the progress line, from inside
    return {"wall": wall, "train": train["metrics"]["train_seconds"], "threads": train["placement"]["threads"],
            "progress": progress[len(progress) // 2] if progress else "-"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("grid_args", nargs="*", help="after --: more `cvmf-ray grid` options")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        subprocess.run([*CLI, "data", "--data-root", str(data), "--prepare", "fashionmnist"], check=True,
                       capture_output=True)  # fmt: skip
        runs: dict[str, list[dict]] = {"one core": [], "every core": []}
        for _ in range(args.repeat):
            for label, extra in (("one core", ["--cpus", "1"]), ("every core", [])):
                result = run_grid(Path(tmp, "runs"), data, [*extra, *args.grid_args])
                runs[label].append(result)
                print(f"{label:10}  wall {result['wall']:6.1f} s  training {result['train']:6.1f} s on "
                      f"{result['threads']} thread(s)", flush=True)  # fmt: skip
                print(f"            progress mid-run: {result['progress']}", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; grid: {' '.join(GRID)}"
          f"{' ' + ' '.join(args.grid_args) if args.grid_args else ''}; medians of {args.repeat}:")  # fmt: skip
    medians = {label: {k: statistics.median(r[k] for r in rs) for k in ("wall", "train")} for label, rs in runs.items()}
    for label, median in medians.items():
        print(f"  {label:10}  wall {median['wall']:6.1f} s  training {median['train']:6.1f} s")
    ratio = medians["every core"]["wall"] / medians["one core"]["wall"]
    print(f"  wall, every core / one core: {ratio:.2f} (target <= 0.65)")


if __name__ == "__main__":
    main()
