"""Wall time of a grid run vs the time spent inside stage functions: Ray's overhead share.

    python scripts/bench_grid.py                 # the embedded default grid, 5 runs
    python scripts/bench_grid.py --repeat 3      # 3 runs
    python scripts/bench_grid.py -- --epochs 60  # anything after -- goes to `cvmf-ray grid`

Stage time is the union of the wall-clock intervals during which at least one stage function ran
(recorded in every artifact's meta.json), so two trials running side by side are not counted twice.
Overhead share = (wall - stage time) / wall; wall includes the CLI's start, Ray's start and shutdown.

Ray's floor puts that share in context: one Tuner with as many trials as the run used (its searcher
hands them out, `reuse_actors` as cvmf-ray sets it), run by a process that imports only Ray and whose trials
do nothing. No grid on this machine can cost less; overhead above the floor = wall - stage time - floor.
Each run is followed by its floor; the medians over the runs are the numbers to read (one run varies by seconds
on a 2-core machine: Ray's own start does).
"""

import json
import logging
import os
import platform
import shutil
import statistics
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


def empty_trials(trials: int) -> None:
    """Ray's floor: start Ray, one Tuner whose searcher hands out `trials` trials that only report, shut down
    (Tune set up as cvmf-ray sets it up: no result loggers, reused trial processes)."""
    import ray
    from ray import tune
    from ray.tune.search import Searcher

    class Handout(Searcher):
        def __init__(self) -> None:
            super().__init__()
            self.left = trials

        def suggest(self, trial_id):
            self.left -= 1
            return {"n": self.left} if self.left >= 0 else Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False):
            assert not error, f"trial {trial_id} failed"

    os.environ.update(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(os.cpu_count())
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="bench-floor-")
    tune.Tuner(
        tune.with_resources(lambda config: tune.report({"x": 1}), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=Handout(), num_samples=-1, reuse_actors=True),
        run_config=tune.RunConfig(name="floor", storage_path=storage, verbose=0),
    ).fit()
    ray.shutdown()
    shutil.rmtree(storage)


def one_run(extra: list[str]) -> dict:
    """One `cvmf-ray grid` into a fresh directory, then Ray's floor for as many trials as it used."""
    results = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    command = [str(Path(sys.executable).with_name("cvmf-ray")), "grid", "--results-dir", str(results), *extra]
    wall = timed(command)
    intervals: dict[str, list] = {}
    for meta_file in results.glob("*/artifacts/*/meta.json"):
        meta = json.loads(meta_file.read_text())
        intervals.setdefault(meta["stage"], []).append(tuple(meta["interval"]))
    trials = len(list(results.glob("*/tune/dag/*-*")))
    shutil.rmtree(results)
    stage_time = union_seconds([i for spans in intervals.values() for i in spans])
    floor = timed([sys.executable, __file__, "--empty-trials", str(trials)])
    overhead = wall - stage_time - floor
    return {"command": command, "wall": wall, "stage_time": stage_time, "intervals": intervals, "trials": trials,
            "floor": floor, "overhead": overhead}  # fmt: skip


def spread(values: list[float]) -> str:
    return f"{statistics.median_low(values):.1f} s (range {min(values):.1f}-{max(values):.1f})"


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    ours = sys.argv[: len(sys.argv) - len(extra)]
    repeat = max(1, int(ours[ours.index("--repeat") + 1])) if "--repeat" in ours else 5
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average at start {load:.1f}")  # fmt: skip
    runs = []
    for i in range(repeat):  # one run says little on a 2-core machine: Ray's own start varies by seconds
        r = one_run(extra)
        runs.append(r)
        print(f"run {i + 1}: wall {r['wall']:.1f} s, inside stage functions {r['stage_time']:.1f} s, "
              f"Ray's floor ({r['trials']} trials) {r['floor']:.1f} s, overhead above it {r['overhead']:.1f} s",
              flush=True)  # fmt: skip
    median = sorted(runs, key=lambda r: r["wall"])[(len(runs) - 1) // 2]  # as statistics.median_low
    print(f"command: cvmf-ray {' '.join(median['command'][1:])}")
    print(f"the median run of {len(runs)}, per stage:")
    for stage, spans in median["intervals"].items():
        summed = sum(b - a for a, b in spans)
        print(f"  {stage:9} {len(spans):3} cells, busy {union_seconds(spans):6.2f} s, summed {summed:6.2f} s")
    share = (median["wall"] - median["stage_time"]) / median["wall"]
    least = median["floor"] / (median["floor"] + median["stage_time"])
    print(f"wall {spread([r['wall'] for r in runs])} (target <= 25); median run: inside stage functions "
          f"{median['stage_time']:.1f} s, Ray overhead share {share:.1%} (no run with this much stage time can "
          f"go below {least:.1%})")  # fmt: skip
    print(f"overhead above Ray's floor {spread([r['overhead'] for r in runs])} (target <= 3)")


if __name__ == "__main__":
    if "--empty-trials" in sys.argv:
        empty_trials(int(sys.argv[sys.argv.index("--empty-trials") + 1]))
    else:
        main()
