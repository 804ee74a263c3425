"""Makespan of a heterogeneous grid on 4 declared GPUs: the streaming DAG on one Tuner against the lower bound
max(total work / slots, critical path), printed beside the stage-wave schedule of the same cells.

    python scripts/bench_cluster.py           # the grid below
    python scripts/bench_cluster.py --tune    # one forget class, and 2 tuning studies x 16 trials streamed beside it

The grid is a real expanded grid (2 models x 2 seeds x 3 forget classes x 4 methods x 4 quant modes: originals,
retrains, unlearning, quantization, evaluation and comparison cells with their real dependencies); each cell
sleeps for a duration set by its stage and model instead of computing, so the measurement is the scheduling
alone: the real `DagSearcher`, scheduler, Ray Tune with `reuse_actors`, one GPU per trial, 4 GPUs declared on a
local Ray (this machine has none). Trainings are unequal: one model's take 3x the other's. The stage-wave
schedule is what one Tuner per stage would at best achieve: each stage's cells list-scheduled (longest first)
on the 4 slots, stage after stage.

With --tune, finetune is also tuned (`--tune finetune --tune-trials 16`, seeds 0-2, the search on seed 0): one
study per model, each trial a cell that sleeps like an unlearning and reports a random objective to the study's
real OptunaSearch; the tuned unlearn cells of seeds 1-2 wait for their study's last trial.
"""

from __future__ import annotations

import heapq
import logging
import os
import platform
import random
import sys
import tempfile
import time

SLOTS = 4
SECONDS = {"train": {"small_cnn": 12.0, "resnet18": 36.0}, "tune": 4.0, "unlearn": 4.0, "quantize": 0.6,
           "evaluate": 1.2, "compare": 0.3}  # fmt: skip


def duration(cell) -> float:
    value = SECONDS[cell.stage]
    return value[cell.params["model"]] if isinstance(value, dict) else value


def sleeping_trial(config: dict, run) -> None:
    """The trial protocol of cvmf_ray.trial.cell_trial, with a sleep where the cell's work would be."""
    import json

    import ray
    from ray import tune

    from cvmf_ray.trial import RESULT_KEY, grid_cells

    cells, node = grid_cells(run.grid[0]), ray.get_runtime_context().get_node_id()
    for key in config["cells"]:
        started = time.time()
        time.sleep(duration(cells[key]))
        event = {"key": key, "status": "done", "node": node, "interval": [started, time.time()],
                 "seconds": time.time() - started}  # fmt: skip
        if cells[key].stage == "tune":
            event["trial"] = {"objective": random.random(), "hparams": json.dumps(config["hparams"][key])}
        tune.report({RESULT_KEY: json.dumps([event])})
    tune.report({RESULT_KEY: "[]"})


def critical_path(grid) -> float:
    """The longest chain of durations through parents and inputs (a cell starts once everything it reads ends)."""
    from cvmf_ray.grid import STAGES

    finish: dict[str, float] = {}
    for cell in sorted(grid.cells.values(), key=lambda c: STAGES.index(c.stage)):
        finish[cell.key] = max((finish[k] for k in cell.reads), default=0.0) + duration(cell)
    return max(finish.values())


def stage_waves(grid) -> float:
    """One wave per stage, each wave's cells longest first onto the earliest free slot, waves back to back."""
    from cvmf_ray.grid import STAGES

    total = 0.0
    for stage in STAGES:
        slots = [0.0] * SLOTS
        for seconds in sorted((duration(c) for c in grid.stage(stage)), reverse=True):
            heapq.heapreplace(slots, slots[0] + seconds)
        total += max(slots)
    return total


def main() -> None:
    import ray

    from cvmf_ray.config import load_config
    from cvmf_ray.grid import expand_grid
    from cvmf_ray.progress import Progress
    from cvmf_ray.runner import DagSearcher, Plan, StopSignal, fit
    from cvmf_ray.scheduler import Scheduler
    from cvmf_ray.store import RunStore
    from cvmf_ray.studies import Studies

    tuning = "--tune" in sys.argv[1:]
    options = {"forget_classes": "0", "seeds": "0,1,2", "tune_methods": "finetune", "tune_trials": 16} if tuning else {
        "forget_classes": "0,1,2", "seeds": "0,1"}  # fmt: skip
    config = load_config(models="small_cnn,resnet18", methods="original,retrain,finetune,random_label",
                         quant="fp32,fp16,int8,int4_weight", **options)  # fmt: skip
    grid = expand_grid(config)
    store = RunStore(tempfile.mkdtemp(prefix="bench-cluster-"))
    os.environ.update(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    ray.init(num_cpus=8, num_gpus=SLOTS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)

    class TimedSearcher(DagSearcher):
        """Also keeps when each cell slept."""

        def _apply(self, event: dict, release: dict) -> None:
            intervals.append(event["interval"])
            super()._apply(event, release)

    intervals: list[list[float]] = []
    scheduler = Scheduler(grid, set())
    progress = Progress(lambda: searcher.counts(), lambda: (scheduler.cost_done, scheduler.cost_left), False, print)
    studies = Studies(grid, {}) if tuning else None
    searcher = TimedSearcher(scheduler, Plan(1.0, 1.0, SLOTS), store, progress, StopSignal(), studies=studies)
    started = time.time()
    fit(config, grid, store, searcher, searcher.plan, trainable=sleeping_trial)
    wall = time.time() - started
    ray.shutdown()
    makespan = max(b for _, b in intervals) - min(a for a, _ in intervals)
    work = sum(duration(c) for c in grid.cells.values())
    bound = max(work / SLOTS, critical_path(grid))
    counts = ", ".join(f"{n} {stage}" for stage, n in grid.counts().items())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Ray with 8 CPUs and {SLOTS} declared GPUs, "
          f"1 GPU per trial; load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"grid: {counts} ({len(intervals)} cells ran); durations {SECONDS}")
    print(f"total work {work:.1f} s = {work / SLOTS:.1f} s on {SLOTS} slots; critical path {critical_path(grid):.1f} s")
    print(f"streaming DAG on one Tuner: makespan {makespan:.1f} s (fit wall {wall:.1f} s) = "
          f"{makespan / bound:.3f} x the lower bound {bound:.1f} s (target <= 1.1)")  # fmt: skip
    print(f"stage waves, perfectly packed, no overhead: {stage_waves(grid):.1f} s = {stage_waves(grid) / bound:.3f} x")


if __name__ == "__main__":
    main()
