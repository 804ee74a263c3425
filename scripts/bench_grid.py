"""Wall time of a grid run vs the time spent inside stage functions: Ray's overhead share.

    python scripts/bench_grid.py                 # the embedded default grid
    python scripts/bench_grid.py -- --epochs 60  # anything after -- goes to `cvmf-ray grid`

Stage time is the union of the wall-clock intervals during which at least one stage function ran
(recorded in every artifact's meta.json), so two trials running side by side are not counted twice.
Overhead share = (wall - stage time) / wall; wall includes the CLI's start, Ray's start and shutdown.

Ray's floor puts that share in context: the same Tuner waves, with as many trials each, run by a
process that imports only Ray and whose trials do nothing. No grid on this machine can cost less.
"""

import json
import logging
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


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{command[1]} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return time.perf_counter() - started


def empty_waves(trials_per_wave: list[int]) -> None:
    """Ray's floor: start Ray, one Tuner per wave whose trials only report, shut down (Tune set up as
    cvmf-ray sets it up: only the JSON result logger)."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    os.environ.update(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    storage = tempfile.mkdtemp(prefix="bench-floor-")
    for wave, trials in enumerate(trials_per_wave):
        tune.Tuner(
            tune.with_resources(lambda config: tune.report({"done": 1}), {"cpu": 1}),
            param_space={"trial": tune.grid_search(list(range(trials)))},
            run_config=tune.RunConfig(
                name=f"wave{wave}", storage_path=storage, verbose=0, callbacks=[JsonLoggerCallback()]
            ),
        ).fit()
    ray.shutdown()
    shutil.rmtree(storage)


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    results = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    command = [str(Path(sys.executable).with_name("cvmf-ray")), "grid", "--results-dir", str(results), *extra]
    wall = timed(command)
    intervals: dict[str, list] = {}
    for meta_file in results.glob("*/artifacts/*/meta.json"):
        meta = json.loads(meta_file.read_text())
        intervals.setdefault(meta["stage"], []).append(tuple(meta["interval"]))
    stages = ("train", "unlearn", "quantize", "evaluate")
    records = [record for stage in stages for record in results.glob(f"*/waves/{stage}.json")]
    waves = [json.loads(record.read_text())["batches"] for record in records]
    stage_time = union_seconds([i for spans in intervals.values() for i in spans])
    floor = timed([sys.executable, __file__, "--empty-waves", ",".join(map(str, waves))])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: cvmf-ray {' '.join(command[1:])}")
    for stage, spans in intervals.items():
        summed = sum(b - a for a, b in spans)
        print(f"  {stage:9} {len(spans):3} cells, busy {union_seconds(spans):6.2f} s, summed {summed:6.2f} s")
    share = (wall - stage_time) / wall
    print(f"wall {wall:.1f} s, inside stage functions {stage_time:.1f} s, Ray overhead share {share:.1%}")
    print(
        f"Ray's floor ({len(waves)} waves of {waves} trials that do nothing): {floor:.1f} s; "
        f"overhead above it {wall - stage_time - floor:.1f} s; with this much stage time no run "
        f"can have a share below {floor / (floor + stage_time):.1%}"
    )
    shutil.rmtree(results)


if __name__ == "__main__":
    if "--empty-waves" in sys.argv:
        empty_waves([int(n) for n in sys.argv[sys.argv.index("--empty-waves") + 1].split(",")])
    else:
        main()
