"""The Ray Tune layer: one `tune.Tuner` per invocation over the whole DAG of cells.

`DagSearcher` (a Tune `Searcher`) turns cells into trials the moment their parent is done: `suggest` hands out
the highest-ranked ready cells (critical path first, see scheduler.py) and returns None while nothing is ready.
A cell that fits a model (train, unlearn) is a trial of its own; cheap cells (quantize, evaluate, compare) are
batched so Tune's per-trial cost stays amortised. A trial asks for one CPU and `--gpus-per-trial` of a GPU: with
`reuse_actors`, Tune keeps finished trials' processes for the next trial of the same shape. The one exception
keeps every core busy on a CPU-only run: a long cell (a training, or a Fashion-MNIST evaluation) that fewer
ready cells than free cores leave room for asks for those cores (`DagSearcher._cpus_for`), and Tune gives it a
fresh process (it evicts idle processes of the other shape, whose CPUs the wide trial needs). Trials report
every finished cell (trial.py), which releases its readers at once: no stage waits for another.

Storage is the run's state: finished and failed cells come from one listing of `artifacts/` and `failures/`
at start, and from the trials' reports afterwards. Every invocation is a fresh Tuner; a crash loses nothing,
because cells are idempotent and training resumes from its own epoch checkpoints (trial.py). The driver never
reads artifact bytes: they travel between trials through node-local object-store caches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.search import Searcher

from cvmf_ray.cache import CACHE_NAME, ArtifactCache
from cvmf_ray.config import GridConfig
from cvmf_ray.errors import Interrupted, UsageError
from cvmf_ray.grid import Grid
from cvmf_ray.objective import WORST
from cvmf_ray.progress import Progress
from cvmf_ray.scheduler import RUNNING, Scheduler, cell_work, is_solo
from cvmf_ray.store import RunStore
from cvmf_ray.studies import Studies
from cvmf_ray.trial import RESULT_KEY, RunSettings, cell_trial

JOIN_TIMEOUT_S = 25  # joining --address gives up after this (a Ray driver otherwise retries for minutes)
TARGET_BATCH_S = 20.0  # a cheap batch holds about this much estimated work
FIRST_BATCH = 8  # cheap cells per batch until their duration has been measured
PROCESS_MEMORY = 1 << 30  # what one trial process (torch, a dataset, a model) needs at least: caps concurrency
CACHE_SHARE = 0.5  # of a node's object store that its artifact cache may hold
# A cell that never raised, but whose trial Tune gave up on, gets this many new trials: its processes died.
# Tune can spend its retries on one death: it hands the next trial to a reused process that died while idle,
# then the retry to the same dead process (tests/test_faults.py).
RERUNS_AFTER_DEATH = 1
# A trial takes the cores nothing else can use only when its cells are this much work (pixels through the model,
# `scheduler.cell_work`): a wider trial needs a fresh process (1-3 s of imports), which pays from ~20 s of
# one-core work. Fashion-MNIST's one epoch is 4.7e7, its evaluation 5.5e7; digits' 30-epoch training 3.5e6.
WIDE_MIN_WORK = 2e7
EXPERIMENT = "dag"  # Tune's experiment name under RUN_DIR/tune

Log = Callable[[str], None]


class Signals:
    """Ctrl-C and SIGTERM. Outside Tune's loop the handler raises `Interrupted` at once. Inside it, where the
    main thread mostly waits in Ray's Cython code (an exception raised there surfaces as a SystemError), the
    signal is noted and `RunControl` raises it between two steps of the loop (at most 0.1 s later); a second
    signal raises at once."""

    received: int | None = None
    deferred = False

    @classmethod
    def install(cls) -> None:
        cls.received = None  # a signal an earlier run in this process took is not this run's
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, cls._handle)

    @classmethod
    def _handle(cls, signum, frame) -> None:
        if cls.deferred and cls.received is None:
            cls.received = signum
            return
        raise Interrupted(signum)

    @classmethod
    def raise_received(cls) -> None:
        if cls.received is not None:
            raise Interrupted(cls.received)

    @classmethod
    @contextlib.contextmanager
    def deferring(cls):
        """Note signals instead of raising them while Ray's own code runs in the main thread."""
        cls.deferred = True
        try:
            yield
        finally:
            cls.deferred = False


class RunStopped(Exception):
    """The run had to stop before every cell ran: storage full, or another driver took the run over."""


class StopSignal:
    """Why the run must stop early, set from wherever it is found (a trial's report, the lock's heartbeat)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.lock_lost = False  # then the run is another driver's: this one must not write its table

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason

    def lose_lock(self, reason: str) -> None:
        self.lock_lost = True
        self.set(reason)


@dataclass
class Plan:
    cpus_per_trial: float  # what a trial asks for, unless it is a wide one (`DagSearcher._cpus_for`)
    gpus_per_trial: float
    slots: int  # trials that fit at once
    cpus: float = 1.0  # the CPUs Ray was given (`--cpus`, or the cluster's)


# ---------------------------------------------------------------- joining Ray


def connect(config: GridConfig, verbose: bool) -> Plan:
    """Start a local Ray (or join `config.address`) and plan each trial's resources against what exists."""
    os.environ.update(
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        RAY_AIR_NEW_OUTPUT="0",  # no config boxes; progress.py prints what a person needs
        TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",  # no per-trial JSON/CSV/TensorBoard files: the cells report
        TUNE_DISABLE_SIGINT_HANDLER="1",  # the CLI handles Ctrl-C and SIGTERM itself
        TUNE_PRINT_ALL_TRIAL_ERRORS="0",
        TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S="1000000",  # requests are checked before the run
    )
    # torchao's deprecated registration of its KernelPreference enum warns in every process that imports it
    # (trials, inductor's compile workers): local Ray processes inherit this environment
    os.environ.setdefault("TORCH_LOGS", "-torch.utils._pytree")
    common = {"logging_level": logging.ERROR, "log_to_driver": verbose, "namespace": f"cvmf-ray-{os.getpid()}"}
    if config.address:
        ray.init(address=config.address, **common)
    else:  # num_gpus None: Ray counts the GPUs (plan_resources keeps those torch can use)
        ray.init(address="local", num_cpus=config.cpus or os.cpu_count(), num_gpus=config.gpus,
                 include_dashboard=config.dashboard, dashboard_host="127.0.0.1", **common)  # fmt: skip
    try:
        return plan_resources(config)
    except UsageError:
        ray.shutdown()
        raise


PROBE = """
import logging, sys, ray
try:
    ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
except Exception as err:
    print(f"{type(err).__name__}: {err}".strip().splitlines()[0]); sys.exit(1)
"""


def probe_cluster(address: str) -> None:
    """Join once in a throwaway process with a deadline: a Ray driver pointed at a wrong address retries for
    minutes (and ignores SIGTERM meanwhile); this fails within JOIN_TIMEOUT_S with what to check."""
    advice = ("check the address (HOST:PORT of the head's GCS, `ray status` on the head prints it), that the "
              "cluster runs Ray 2.60, and for a token-authenticated cluster (Ray 2.60's default) that "
              "RAY_AUTH_MODE=token is set here")  # fmt: skip
    deadline = time.monotonic() + JOIN_TIMEOUT_S  # one bound for both tries
    host, _, port = address.rpartition(":")
    if host and port.isdigit():  # nothing listening fails at once, without starting a Ray driver
        try:
            socket.create_connection((host, int(port)), timeout=JOIN_TIMEOUT_S).close()
        except OSError as err:
            raise UsageError(f"cannot join the Ray cluster at {address!r}: {err.strerror or err}; {advice}") from None
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, address], capture_output=True, text=True,
                               timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
    except subprocess.TimeoutExpired:
        raise UsageError(f"cannot join the Ray cluster at {address!r}: no answer within {JOIN_TIMEOUT_S} s; "
                         f"{advice}") from None  # fmt: skip
    if probe.returncode != 0:
        reason = (probe.stdout.strip() or probe.stderr.strip() or "the Ray driver exited").splitlines()[-1][:300]
        raise UsageError(f"cannot join the Ray cluster at {address!r} ({reason}); {advice}")


@ray.remote
def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def usable_gpus(config: GridConfig, counted: float) -> float:
    """Of the GPUs Ray counted on this machine, those torch's CUDA can use. Ray counts every GPU it finds (an
    Apple GPU; NVIDIA GPUs under a driver too old for this torch), where trials would fall back to the CPU
    while holding a GPU slot each. Asked of torch in a worker holding them all: the driver imports no torch."""
    if config.address or config.gpus is not None or not counted:
        return counted
    return min(counted, ray.get(_cuda_devices.options(num_gpus=counted).remote()))


def plan_resources(config: GridConfig) -> Plan:
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), usable_gpus(config, total.get("GPU", 0.0))
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
    if gpus_per_trial:
        slots = min(slots, int(gpus / gpus_per_trial + 1e-9))
    if not config.address:  # a local run never starts more processes than this machine can hold
        import psutil

        slots = min(slots, max(1, psutil.virtual_memory().total // PROCESS_MEMORY))
    return Plan(cpus_per_trial, gpus_per_trial, max(slots, 1), cpus)


def node_free_cpus(free: float) -> float:
    """The most CPUs one alive node has free, as Ray last saw it; `free` (the run's own count) on one node."""
    if len([node for node in ray.nodes() if node["Alive"]]) == 1:
        return free
    from ray._private.state import available_resources_per_node  # no public per-node view without a dashboard

    return max((node.get("CPU", 0.0) for node in available_resources_per_node().values()), default=0.0)


def start_caches() -> dict:
    """One artifact cache per alive node, pinned there, holding up to CACHE_SHARE of its object store.

    Returns {node id: handle}: the driver must hold the handles, since Ray ends an actor nobody holds.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {
        node["NodeID"]: ArtifactCache.options(
            name=CACHE_NAME.format(node=node["NodeID"]),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(int(node["Resources"].get("object_store_memory", 0) * CACHE_SHARE))
        for node in ray.nodes()
        if node["Alive"]
    }


# ---------------------------------------------------------------- the searcher


class DagSearcher(Searcher):
    """Hands ready cells to Tune as trials and applies the cells' reports to the scheduler."""

    def __init__(self, scheduler: Scheduler, plan: Plan, store: RunStore, progress: Progress, stop: StopSignal,
                 on_row: Callable[[dict], None] | None = None, studies: Studies | None = None) -> None:  # fmt: skip
        super().__init__()
        self.scheduler, self.plan, self.store, self.progress, self.stop = scheduler, plan, store, progress, stop
        self.on_row = on_row  # told each evaluate cell's row as it finishes (grid --mlflow)
        self.studies = studies  # the tuning studies' searchers: a trial cell's values, and its score back
        self.trials: dict[str, dict] = {}  # tune key -> its tuning.parquet row, reported this invocation
        self.caches = start_caches()  # node id -> the artifact cache there
        self.live: dict[str, list[str]] = {}  # trial id -> the keys of its batch
        self.held: dict[str, float] = {}  # trial id -> the CPUs it asked for
        self.started: set[str] = set()  # live trials Tune has started (the others wait for resources)
        self.retry_errors: dict[str, str] = {}  # the last error of a cell whose trial Tune may retry
        self.rows: dict[str, dict] = {}  # evaluate key -> own columns, reported this invocation
        self.comparisons: dict[str, dict] = {}  # compare key -> its output, reported this invocation
        self.cheap_seconds = (0.0, 0)  # summed seconds and count of finished cheap cells
        self.reruns: Counter = Counter()  # cell -> new trials it got after Tune gave up on its trial

    def __getstate__(self) -> dict:
        """Tune pickles its configuration into tuner.pkl for `Tuner.restore`, which cvmf-ray never calls
        (storage is the run's state): nothing of the live searcher needs to survive."""
        return {}

    def suggest(self, trial_id: str):
        if self.stop.reason is not None:
            return Searcher.FINISHED if not self.live else None
        batch = self.scheduler.next_batch(self._batch_size())
        if not batch:
            return Searcher.FINISHED if self.scheduler.finished else None
        self.live[trial_id] = [cell.key for cell in batch]
        sources, missing = defaultdict(list), []
        for cell in batch:
            for key in cell.reads:
                if key in self.scheduler.node_of:
                    sources[self.scheduler.node_of[key]].append(key)
                elif self.scheduler.state[key] != "done":
                    missing.append(key)
        kind = "solo" if is_solo(batch[0]) else "batch"
        self.held[trial_id] = self._cpus_for(batch)
        hparams = {cell.key: self.studies.suggest(cell, trial_id) for cell in batch if cell.stage == "tune"}
        return {"kind": kind, "cells": self.live[trial_id], "sources": dict(sources), "missing": missing,
                "cpus": self.held[trial_id], **({"hparams": hparams} if hparams else {})}  # fmt: skip

    def _cpus_for(self, batch: list) -> float:
        """Every core busy: on a CPU-only run, a trial whose cells are worth a fresh process (`WIDE_MIN_WORK`) takes
        the free CPUs that no ready cell can use, split evenly between it and the ready cells and capped by the
        most one node has free; its torch then runs that many threads (trial.py). Every other trial asks for one
        CPU, so with more ready cells than free cores, and on GPUs, nothing changes. Ray grants what a trial asks
        for, so threads never outnumber the CPUs Ray was given."""
        if self.plan.gpus_per_trial or sum(cell_work(cell) for cell in batch) < WIDE_MIN_WORK:
            return self.plan.cpus_per_trial
        free = self.plan.cpus - sum(cpus for trial, cpus in self.held.items() if self._working(trial))
        share = min(free // (1 + self.scheduler.ready_count()), node_free_cpus(free))
        return float(max(self.plan.cpus_per_trial, share))

    def _batch_size(self) -> int:
        """Spread the ready cheap cells over every slot, each batch about TARGET_BATCH_S of estimated work."""
        ready = self.scheduler.ready_count(solo=False)
        total, count = self.cheap_seconds
        cap = max(1, int(TARGET_BATCH_S * count / total)) if total > 0 else FIRST_BATCH
        return max(1, min(math.ceil(ready / self.plan.slots), cap))

    def _working(self, trial_id: str) -> bool:
        """Whether a live trial still has a cell to run: one that has reported them all frees its CPUs in a moment,
        so a cell its last report made ready may already count on them (Ray starts it once they are free)."""
        return any(self.scheduler.state[key] == RUNNING for key in self.live.get(trial_id, ()))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        release: dict[str, list[str]] = defaultdict(list)
        for event in json.loads(result.get(RESULT_KEY, "[]")):
            self._apply(event, release)
        for node, keys in release.items():
            if node in self.caches:
                self.caches[node].release.remote(keys)

    def _apply(self, event: dict, release: dict[str, list[str]]) -> None:
        status, key = event["status"], event.get("key")
        cell = self.scheduler.grid.cells.get(key)
        if status == "done":
            self.scheduler.mark_done(key, event.get("node"))
            if "row" in event:
                self.rows[key] = event["row"]
                if self.on_row is not None:
                    self.on_row(event["row"])
            if "compare" in event:
                self.comparisons[key] = event["compare"]
            if "trial" in event:
                self.trials[key] = event["trial"]
                self._scored(key, event["trial"]["objective"], json.loads(event["trial"]["hparams"]))
            if not is_solo(cell):
                total, count = self.cheap_seconds
                self.cheap_seconds = (total + event.get("seconds", 0.0), count + 1)
            self.progress.cell_finished(cell, event.get("seconds", 0.0))
            for read in [*cell.reads, key]:
                if read in self.scheduler.node_of and self.scheduler.releasable(read):
                    release[self.scheduler.node_of[read]].append(read)
        elif status == "failed":
            self.scheduler.mark_failed(key, event["error"])
            self.progress.cell_failed(cell, event["error"])
            self._scored(key, WORST)
        elif status == "retry":
            self.retry_errors[key] = event["error"]
        elif status == "corrupt":
            self.progress.note(f"warning: {event['error']}; recomputing it")
            self.scheduler.mark_corrupt(key, event["parent"], event["error"])
            self._scored(key, None)
        elif status == "storage_full":
            self.stop.set(event["error"])
        elif status == "warning":
            self.progress.note(f"warning: {event['error']}")
        elif status == "progress":
            self.progress.cell_progress(cell, event)
        elif status == "resumed":
            self.progress.note(f"{cell.describe()}: resuming training from its epoch {event['epoch']} checkpoint")

    def trial_started(self, trial_id: str) -> None:
        self.started.add(trial_id)

    def counts(self) -> dict[str, Counter]:
        """The scheduler's counts, its running cells split into running (their trial started) and queued."""
        counts = self.scheduler.counts()
        for trial_id, keys in self.live.items():
            if trial_id in self.started:
                continue
            for key in keys:
                if self.scheduler.state[key] == RUNNING:
                    stage = self.scheduler.grid.cells[key].stage
                    counts[stage]["running"] -= 1
                    counts[stage]["queued"] += 1
        return counts

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.started.discard(trial_id)
        self.held.pop(trial_id, None)
        for key in self.live.pop(trial_id, []):
            self.progress.cell_stopped(key)
            if self.scheduler.state[key] != RUNNING:
                continue
            cell = self.scheduler.grid.cells[key]
            if not error:  # the trial was stopped before it got to this cell
                self.scheduler.requeue(key)
                self._scored(key, None)
            elif key not in self.retry_errors and self.reruns[key] < RERUNS_AFTER_DEATH:
                self.reruns[key] += 1
                self.progress.note(f"warning: {cell.describe()}: its trial's process died; running it in a new trial")
                self.scheduler.requeue(key)
                self._scored(key, None)
            else:
                reason = self.retry_errors.get(key, "its trial failed for good (Ray Tune's log under tune/ has why)")
                self.store.save_failure(key, reason)
                self.scheduler.mark_failed(key, reason)
                self.progress.cell_failed(cell, reason)
                self._scored(key, WORST)

    def _scored(self, key: str, objective: float | None, values: dict | None = None) -> None:
        """A tuning trial's score to its study's searcher (None: it ran unscored, and will get new values)."""
        if self.studies is not None:
            self.studies.complete(key, objective, values)


class RunControl(tune.Stopper, tune.Callback):
    """Stops every trial once the searcher has a stop reason, and ticks the progress display."""

    def __init__(self, searcher: DagSearcher) -> None:
        self.searcher = searcher

    def __getstate__(self) -> dict:
        return {}  # see DagSearcher.__getstate__

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.searcher.stop.reason is not None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        Signals.raise_received()
        self.searcher.progress.tick()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.searcher.trial_started(trial.trial_id)


# ---------------------------------------------------------------- one invocation


def fit(config: GridConfig, grid: Grid, store: RunStore, searcher: DagSearcher, plan: Plan,
        trainable: Callable = cell_trial) -> None:  # fmt: skip
    """Run every ready cell through one Tuner until the scheduler has nothing left to hand out.

    `trainable(config, run)` runs one trial's batch; scripts/bench_cluster.py passes one that only sleeps.
    """
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(plan.slots)  # the searcher decides; Tune may queue this many
    settings = RunSettings(store.uri, config.data_root, config.train.checkpoint_every, config.train.compile,
                           [ray.put(grid.cells)])  # fmt: skip
    control = RunControl(searcher)
    tuner = tune.Tuner(
        tune.with_resources(  # each trial's CPUs are its own (a wide one's more, `DagSearcher._cpus_for`)
            tune.with_parameters(trainable, run=settings),
            lambda trial: {"cpu": trial["cpus"], "gpu": plan.gpus_per_trial},
        ),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            reuse_actors=True,  # a trial process stays warm (torch, datasets, models imported) for the next
            trial_dirname_creator=lambda trial: f"{trial.config['kind']}-{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=store.tune_storage[0],
            storage_filesystem=store.tune_storage[1],
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            stop=control,
            callbacks=[control],
            verbose=0,
        ),
    )
    with _no_result_files():
        tuner.fit()
    Signals.raise_received()
    if searcher.stop.reason is not None:
        raise RunStopped(searcher.stop.reason)


class _no_result_files:
    """Tune reads every trial's result.json/progress.csv back after `fit` to build a ResultGrid (three storage
    requests a trial, and a warning when they are absent). Cells report to the searcher instead, and those files
    are never written (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS), so that read is skipped for the duration of `fit`."""

    def __enter__(self):
        from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

        self.original = ExperimentAnalysis._fetch_trial_dataframes
        ExperimentAnalysis._fetch_trial_dataframes = lambda analysis: {}

    def __exit__(self, *exc) -> None:
        from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

        ExperimentAnalysis._fetch_trial_dataframes = self.original
