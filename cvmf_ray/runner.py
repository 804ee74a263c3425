"""The Ray Tune layer: one `tune.Tuner` per stage wave over that wave's unfinished cells.

Each training cell gets a trial of its own, so its epoch checkpoints resume it mid-way after a retry.
Cheap cells of one stage are batched (Ray's per-trial overhead is ~1 s on a small machine): on a
CPU-only run into one trial that holds every slot and spreads them over the warm workers (trial.py),
with GPUs into as many trials as can run at once. Parents travel as driver-owned object refs
(`tune.with_parameters`), with the artifact on storage as the durable fallback. Resume is the
runner's: finished cells are never put in a wave; an interrupted wave is first restored with
`Tuner.restore(..., resume_errored=True)`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import ray
import torch
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from cvmf_ray.config import GridConfig
from cvmf_ray.errors import UsageError
from cvmf_ray.grid import STAGES, Cell, Grid, digest
from cvmf_ray.store import CorruptArtifact, RunStore, StorageFull
from cvmf_ray.trial import stage_trial
from cvmf_ray.workers import CellWorker, WorkerLeases

PARENT_REF_BUDGET_BYTES = 2 << 30  # beyond this, trials read parents from storage instead of the object store

Log = Callable[[str], None]


@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    slots: int  # trials that fit at once
    total_gpus: float = 0.0


def spread_gpu_share(share: float, total_gpus: float, trials: int) -> float:
    """Raise a fractional GPU share so a wave's trials spread over every GPU instead of piling up.

    Ray places fractional requests first-fit: 4 trials at 0.25 on 4 GPUs all land on GPU 0. Asking for
    1/ceil(trials/GPUs) of a GPU instead (never less than requested, never more than 1) leaves each GPU
    with at most that many trials; 8 trials at 0.5 on 4 GPUs stay at 0.5, two per GPU.
    """
    if not 0 < share < 1 or total_gpus < 1 or trials < 1:
        return share
    return max(share, min(1.0, 1 / math.ceil(trials / int(total_gpus))))


def connect(config: GridConfig, log: Log) -> Resources:
    """Start a local Ray (or join `config.address`) and check the per-trial request fits."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # fresher experiment state after a crash
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no config boxes: Progress prints one line per trial
    # Tune's default CSV and TensorBoard loggers cost ~1.5 s of driver CPU per run (importing tensorboardX)
    # and a write per report; _fresh_wave keeps the JSON one, which Tune's ResultGrid reads back
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # num_to_keep=1 forces a state snapshot at every epoch checkpoint: wanted (crash consistency), not a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if config.address:
        _join(config.address)
    else:
        local_gpus = torch.cuda.device_count()
        if config.gpus is not None and config.gpus > local_gpus:
            raise UsageError(f"--gpus {config.gpus} asks for more GPUs than this machine has ({local_gpus})")
        _start_local_ray(config, local_gpus)
    try:
        return _plan_resources(config, log)
    except UsageError:
        ray.shutdown()
        raise


def _start_local_ray(config: GridConfig, local_gpus: int) -> None:
    ray.init(
        address="local",
        num_cpus=config.cpus or os.cpu_count(),
        num_gpus=local_gpus if config.gpus is None else config.gpus,
        include_dashboard=config.dashboard,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
    )


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Ray's C++ core logs a retry warning per second while it cannot join)."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _join(address: str) -> None:
    try:
        with _quiet_stderr():
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as err:  # ConnectionError, AuthenticationError, ...: all mean "cannot join"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"cannot join the Ray cluster at {address!r} ({reason}); a token-authenticated cluster "
            "(Ray 2.60's default) needs RAY_AUTH_MODE=token in this environment"
        ) from None


def _plan_resources(config: GridConfig, log: Log) -> Resources:
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    gpus_per_trial = config.gpus_per_trial if config.gpus_per_trial is not None else (1.0 if gpus else 0.0)
    if gpus_per_trial > 0:
        largest = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
        if gpus_per_trial > largest:
            raise UsageError(
                f"--gpus-per-trial {gpus_per_trial:g} cannot be satisfied: the largest node has {largest:g} GPU(s) "
                f"(cluster total {gpus:g}); Ray would leave such trials pending forever"
            )
    cpus_per_trial = 1.0 if cpus >= 1 else cpus
    slots = int(cpus // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial > 0:
        slots = min(slots, int(gpus // gpus_per_trial))
    log(f"Ray: {cpus:g} CPU, {gpus:g} GPU; each trial takes {cpus_per_trial:g} CPU + {gpus_per_trial:g} GPU")
    return Resources(cpus_per_trial, gpus_per_trial, max(slots, 1), gpus)


def batch_cells(stage: str, cells: list[Cell], trials: int) -> list[list[Cell]]:
    """Training: a trial per cell (its checkpoints are per trial). Other stages: at most `trials` trials."""
    if stage == "train":
        return [[c] for c in cells]
    count = min(trials, len(cells))
    return [cells[i::count] for i in range(count)]


class Progress(tune.Callback):
    """One line per finished or failed trial instead of Tune's verbose tables."""

    def __init__(self, stage: str, log: Log) -> None:
        self.stage, self.log, self.started = stage, log, time.perf_counter()

    def _line(self, trial, mark: str) -> None:
        cells = [Cell(**c) for c in trial.config["batch"]["cells"]]
        label = cells[0].describe() if len(cells) == 1 else f"{len(cells)} cells"
        self.log(f"  {mark} {self.stage}: {label} ({time.perf_counter() - self.started:.1f} s)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "cells_done" in result:
            done, cells = result["cells_done"], len(trial.config["batch"]["cells"])
            self.log(f"  {self.stage}: {done}/{cells} cells ({time.perf_counter() - self.started:.1f} s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")


class GridRunner:
    """Runs a grid's stages in order, one wave at a time, skipping everything already finished."""

    def __init__(self, config: GridConfig, grid: Grid, store: RunStore, resources: Resources, log: Log) -> None:
        self.config, self.grid, self.store, self.resources, self.log = config, grid, store, resources, log
        self.started = time.time()
        self.failed: dict[str, str] = {}
        # CPU-only runs execute every cell in one warm process per slot ("reuse actors for CPU stages")
        cpu_only = resources.gpus_per_trial == 0
        self.workers = [CellWorker.remote() for _ in range(resources.slots)] if cpu_only else None
        self.leases = WorkerLeases.remote(resources.slots) if cpu_only else None
        self.warmed = False

    def run(self) -> dict[str, str]:
        """Returns {key: error} for every cell that failed (or could not run) in this invocation."""
        self._discard_corrupt_parents()
        for stage in STAGES:
            pending = self._runnable(stage)
            if pending:
                self._run_stage(stage, pending)
        return self.failed

    def _runnable(self, stage: str) -> list[Cell]:
        """Unfinished cells of `stage`; those whose parent failed are marked failed instead."""
        runnable = []
        for cell in self.grid.stage(stage):
            if self.store.is_done(cell.key):
                continue
            if cell.parent is not None and not self.store.is_done(cell.parent):
                reason = self.failed.get(cell.parent, "did not finish")
                parent = self.grid.cells[cell.parent]
                self._fail(cell.key, f"{parent.stage} cell {parent.key} failed: {reason.split(' failed: ')[-1]}")
                continue
            runnable.append(cell)
        return runnable

    def _fail(self, key: str, error: str) -> None:
        self.failed[key] = error
        self.store.save_failure(key, error)

    def _discard_corrupt_parents(self) -> None:
        """Verify (SHA-256) every finished artifact that unfinished work will read; recompute bad ones."""
        checked: set[str] = set()
        while True:
            needed = {
                c.parent
                for c in self.grid.cells.values()
                if c.parent is not None and c.parent not in checked and not self.store.is_done(c.key)
            }
            needed = {k for k in needed if self.store.is_done(k)}
            if not needed:
                return
            for key in needed:
                checked.add(key)
                try:
                    self.store.load_artifact(key)
                except CorruptArtifact as err:
                    self.log(f"warning: {err}; recomputing it")
                    self.store.discard_artifact(key)

    def _run_stage(self, stage: str, cells: list[Cell]) -> None:
        self.log(f"[{stage}] {len(cells)} cell(s) to run")
        if self.workers and stage != "train" and not self.warmed:
            for worker in self.workers:  # imports for the later stages, while Tune starts this wave
                worker.warm.remote()
            self.warmed = True
        restored = self._restore_interrupted_wave(stage, cells)
        if restored:
            cells = [c for c in cells if not self.store.is_done(c.key) and not self._failed_now(c.key)]
        if cells:
            self._fresh_wave(stage, cells)
        recorded = self.store.failures()
        for cell in self.grid.stage(stage):
            if not self.store.is_done(cell.key) and self._failed_now(cell.key):
                self.failed[cell.key] = recorded.get(cell.key, "failed")

    def _failed_now(self, key: str) -> bool:
        record = self.store.path("failures", f"{key}.json")
        info = self.store.fs.get_file_info(record)
        return info.mtime is not None and info.mtime.timestamp() >= self.started - 1

    def _trainable(self, stage: str, cells: list[Cell], trials: int):
        parents = self._put_parents(cells)
        fn = tune.with_parameters(stage_trial, parents=parents, workers=self.workers, leases=self.leases)
        if self.workers and stage != "train":  # one trial holds every slot it spreads cells over
            slots = min(len(self.workers), len(cells))
            bundles = [{"CPU": self.resources.cpus_per_trial}] * slots
            return tune.with_resources(fn, tune.PlacementGroupFactory(bundles, strategy="PACK"))
        gpus = spread_gpu_share(self.resources.gpus_per_trial, self.resources.total_gpus, trials)
        return tune.with_resources(fn, {"cpu": self.resources.cpus_per_trial, "gpu": gpus})

    def _put_parents(self, cells: list[Cell]) -> dict:
        """Driver-owned object refs of the parents' verified safetensors bytes: they outlive every trial
        of the wave, and no tensor is ever pickled (torch's pickling cannot even rebuild float8 storages)."""
        refs, budget = {}, PARENT_REF_BUDGET_BYTES
        for key in sorted({c.parent for c in cells if c.parent is not None}):
            meta, blob = self.store.read_weights(key)
            if len(blob) <= budget:
                refs[key], budget = ray.put((meta, blob)), budget - len(blob)
        return refs

    def _settings(self) -> dict:
        return {
            "run_uri": self.store.uri,
            "data_root": self.config.data_root,
            "checkpoint_every": self.config.recipe.checkpoint_every,
            "compile": self.config.recipe.compile,
        }

    def _restore_interrupted_wave(self, stage: str, cells: list[Cell]) -> bool:
        """Restore the stage's last wave if a crash interrupted it; False when there is nothing to restore."""
        if not self.store.file_exists("waves", f"{stage}.json"):
            return False
        record = self.store.read_json("waves", f"{stage}.json")
        path = f"{self.store.tune_uri}/{record['name']}"
        if record.get("finished") or not tune.Tuner.can_restore(path):
            return False
        trials = record.get("batches", len(cells))
        try:
            tuner = tune.Tuner.restore(path, trainable=self._trainable(stage, cells, trials), resume_errored=True)
        except Exception as err:  # an unreadable experiment state: a fresh wave is always safe
            self.log(f"[{stage}] cannot restore the interrupted wave {record['name']} ({err}); starting afresh")
            return False
        if not _restorable(tuner):
            self.log(f"[{stage}] the interrupted wave {record['name']} had not started; starting it afresh")
            return False
        self.log(f"[{stage}] resuming interrupted wave {record['name']}")
        self._fit(tuner, stage, record["name"], trials)
        return True

    def _fresh_wave(self, stage: str, cells: list[Cell]) -> None:
        batches = batch_cells(stage, cells, 1 if self.workers else self.resources.slots)
        cpu_only = self.workers is not None  # GPU trials get fresh processes: no leaked CUDA memory between them
        name = f"{stage}-{digest([[c.key for c in b] for b in batches])}"
        tuner = tune.Tuner(
            self._trainable(stage, cells, len(batches)),
            param_space={
                **self._settings(),
                "stage": stage,
                "batch": tune.grid_search([{"cells": [asdict(c) for c in b]} for b in batches]),
            },
            tune_config=tune.TuneConfig(
                reuse_actors=cpu_only,
                trial_dirname_creator=lambda trial: f"{stage}_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=self.store.tune_uri,
                failure_config=tune.FailureConfig(max_failures=self.config.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[Progress(stage, self.log), JsonLoggerCallback()],
            ),
        )
        self._fit(tuner, stage, name, len(batches))

    def _fit(self, tuner, stage: str, name: str, batches: int) -> None:
        self.store.write_json({"name": name, "finished": False, "batches": batches}, "waves", f"{stage}.json")
        results = tuner.fit()
        for result in results:
            if result.error is None:
                continue
            storage_full = "No space left" in str(result.error) or "StorageFull" in str(result.error)
            for cell in (Cell(**c) for c in result.config["batch"]["cells"]):
                if not self.store.is_done(cell.key) and not self._failed_now(cell.key):
                    self._fail(cell.key, _first_line(result.error))
            if storage_full:
                raise StorageFull(28, f"results storage is full ({_first_line(result.error)})")
        self.store.write_json({"name": name, "finished": True, "batches": batches}, "waves", f"{stage}.json")


def _restorable(tuner: tune.Tuner) -> bool:
    """A crash while a wave was starting can leave no results, or trials snapshotted without a config."""
    try:
        return all(result.config and "batch" in result.config for result in tuner.get_results())
    except RuntimeError:  # "experiment has not been run, yet"
        return False


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]
