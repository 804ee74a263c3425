"""The one Tune function trainable: a trial runs its batch of cells in its own process, on the resources it holds.

CPU or GPU, training or not, every trial runs this code. Tune's `reuse_actors` keeps its process (and the
torch, dataset and model imports in it) warm from one trial to the next; Tune's `FailureConfig` retries it. A
training cell saves its epoch checkpoints under `checkpoints/KEY/` in the run directory, so whichever trial
runs it next (a Tune retry, or a later invocation after a crash) resumes from its last readable epoch.

A finished artifact goes to storage (the durable truth) and into this node's `ArtifactCache` (cvmf_ray/cache.py),
a long-lived actor that owns it in the object store: readers on any node fetch it from there without touching
storage, the driver never sees the bytes, and the artifact outlives the trial that made it. Each finished cell is
reported to the driver's searcher (coalesced into one `tune.report` per `REPORT_EVERY_S`), which hands out its
readers at once.

This module imports only Ray at the top: heavy imports happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import ray
from ray import tune

from cvmf_ray.cache import CACHE_NAME

REPORT_EVERY_S = 0.25  # coalesce cell reports: each tune.report is a round trip to the driver
RESULT_KEY = "cvmf"  # the one metric a trial reports: a JSON list of events


@dataclass(frozen=True)
class RunSettings:
    """What every trial of a run needs besides its batch (passed once, via `tune.with_parameters`)."""

    uri: str
    data_root: str
    checkpoint_every: int
    compile: bool
    grid: list  # [ObjectRef of {key: Cell}], in a list so that with_parameters hands over the ref itself


def cell_trial(config: dict, run: RunSettings) -> None:
    """Run every cell of `config["cells"]`; report each as done, failed or waiting for a recomputed parent.

    An unexpected error fails the cell and, after the batch, the trial, so Tune retries it: a retry skips the
    cells that finished and resumes a training cell from its last epoch checkpoint.
    """
    _quiet()
    from cvmf_ray.errors import CellError
    from cvmf_ray.store import CorruptArtifact, StorageFull

    store, cells = open_store(run.uri), grid_cells(run.grid[0])
    _use_trial_cpus()
    reporter = Reporter()
    loader = InputLoader(store, config.get("sources", {}), set(config.get("missing", [])))
    unexpected = []
    for key in config["cells"]:
        cell = cells[key]
        started = time.perf_counter()
        try:
            event = _finished_before(cell, store) or _run_cell(
                cell, store, loader, run, reporter, config.get("hparams", {}).get(key)
            )
        except CorruptArtifact as err:
            event = {"status": "corrupt", "parent": err.key, "error": str(err)}
        except CellError as err:
            store.save_failure(key, str(err))
            event = {"status": "failed", "error": str(err)}
        except StorageFull as err:
            reporter.add({"key": key, "status": "storage_full", "error": str(err)})
            reporter.flush()
            raise
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            store.save_failure(key, message)
            unexpected.append(message)
            event = {"status": "retry", "error": message}
        reporter.add({"key": key, "seconds": time.perf_counter() - started, **event})
    reporter.flush()
    tune.report({RESULT_KEY: "[]"})  # a small last result: Tune keeps every trial's last one
    _free_accelerator()
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} cell(s) raised: " + "; ".join(unexpected))


def _finished_before(cell, store) -> dict | None:
    """A cell a previous attempt of this trial finished (Tune retries the whole batch): report it again."""
    if not store.is_done(cell.key):
        return None
    if cell.stage not in ("tune", "evaluate", "compare"):
        return _done_event(cell, {})
    from cvmf_ray.store import CorruptArtifact

    try:
        return _done_event(cell, store.read_meta(cell.key))
    except CorruptArtifact:  # its own output is damaged: this cell runs again (it is nobody's corrupt parent)
        store.discard_artifact(cell.key)
        return None


def _run_cell(cell, store, loader, run: RunSettings, reporter, hparams: dict | None) -> dict:
    from cvmf_ray.cells import CellSettings, execute_cell

    context = ray.get_runtime_context()
    import torch

    placement = {"node_id": context.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                 "threads": torch.get_num_threads()}  # fmt: skip
    settings = CellSettings(run.data_root, trial_device(), run.checkpoint_every, run.compile, placement)
    hooks = training_hooks(cell.key, store, reporter) if cell.stage == "train" else {}
    if cell.stage in ("train", "tune", "unlearn"):
        hooks["meter"] = progress_meter(cell.key, reporter)
    artifact = execute_cell(cell, loader, settings, hparams=hparams, **hooks)
    meta = store.save_artifact(cell.key, artifact.meta, artifact.tensor_file, artifact.blob)
    if cell.stage == "train":
        store.remove("checkpoints", cell.key)
    event = _done_event(cell, meta)
    if cell.stage == "evaluate":
        store.write_json(event["row"], "evaluations", f"{cell.key}.json")
    if artifact.tensor_file:
        _publish(cell.key, meta, artifact.blob, context.get_node_id())
    return event


def _done_event(cell, meta: dict) -> dict:
    event = {"status": "done", "node": ray.get_runtime_context().get_node_id()}
    if cell.stage == "evaluate":
        from cvmf_ray.results import evaluation_row

        event["row"] = evaluation_row(cell, meta)
    elif cell.stage == "compare":
        event["compare"] = meta["metrics"]
    elif cell.stage == "tune":
        from cvmf_ray.results import tuning_row

        event["trial"] = tuning_row(cell, meta)
    return event


# ---------------------------------------------------------------- training checkpoints


def training_hooks(key: str, store, reporter) -> dict:
    """`resume` from the newest readable epoch checkpoint, and `on_epoch` that saves each epoch's checkpoint.

    An unreadable checkpoint (torn by a crash, overwritten) is reported once, deleted, and the one before it
    is tried; with none readable the cell trains from scratch. Nothing is unpickled: weights_only=True.
    """
    import torch

    resume = None
    for name in reversed(store.checkpoint_names(key)):
        try:
            resume = torch.load(io.BytesIO(store.read_bytes("checkpoints", key, name)), weights_only=True)
            int(resume["epoch"])
            break
        except Exception as err:  # any unreadable file: a torn write, random bytes, a foreign pickle
            reporter.add({"key": key, "status": "warning", "error": f"checkpoint {name} of training cell {key} is "
                          f"unreadable ({type(err).__name__}); deleted it, resuming from the one before"})  # fmt: skip
            store.remove("checkpoints", key, name)
            resume = None
    if resume is not None:
        reporter.add({"key": key, "status": "resumed", "epoch": int(resume["epoch"])})

    def on_epoch(epoch: int, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        store.save_checkpoint(key, epoch, buffer.getvalue())

    return {"resume": resume, "on_epoch": on_epoch}


def progress_meter(key: str, reporter):
    """A meter whose readings (epochs done of the total, images per second) reach the driver's progress line."""
    from cvmf_ray.meter import Meter

    return Meter(send=lambda reading: reporter.add({"key": key, "status": "progress", **reading}, now=True))


# ---------------------------------------------------------------- inputs and the node-local cache


def _publish(key: str, meta: dict, blob: bytes, node: str) -> None:
    """Hand a finished artifact to this node's cache before reporting it, so its readers find it there."""
    with contextlib.suppress(ValueError, ray.exceptions.RayError):  # no cache here (late node, died): storage serves
        ray.get(ray.get_actor(CACHE_NAME.format(node=node)).hold.remote(key, meta, blob))


class InputLoader:
    """`load(key)` -> (meta, tensors) of a finished cell: from the node cache that holds it, else from storage.

    Storage reads verify the SHA-256 and discard a damaged artifact (CorruptArtifact tells the driver to
    recompute it). The last few loads are kept: a batch often reads one parent several times.
    """

    KEEP = 4

    def __init__(self, store, sources: dict[str, list[str]], missing: set[str]) -> None:
        self.store, self.missing = store, missing
        self.node_of = {key: node for node, keys in sources.items() for key in keys}
        self.recent: OrderedDict[str, tuple] = OrderedDict()

    def __call__(self, key: str) -> tuple[dict, dict]:
        from cvmf_ray.cells import decode
        from cvmf_ray.errors import MissingInput
        from cvmf_ray.store import CorruptArtifact

        if key in self.missing:
            raise MissingInput(key)
        if key not in self.recent:
            meta, blob = self._from_cache(key) or self._from_storage(key)
            try:
                self.recent[key] = (meta, decode(key, blob))
            except CorruptArtifact:
                self.store.discard_artifact(key)
                raise
            while len(self.recent) > self.KEEP:
                self.recent.popitem(last=False)
        self.recent.move_to_end(key)
        return self.recent[key]

    def _from_cache(self, key: str) -> tuple[dict, bytes] | None:
        node = self.node_of.get(key)
        if node is None:
            return None
        try:
            found = ray.get(ray.get_actor(CACHE_NAME.format(node=node)).lookup.remote(key))
            if found is None:
                return None
            meta, blob = ray.get(found[0])
        except (ValueError, ray.exceptions.RayError):  # the cache or its node is gone: storage serves
            return None
        return {**meta, "read_from": "object store"}, blob

    def _from_storage(self, key: str) -> tuple[dict, bytes]:
        from cvmf_ray.store import CorruptArtifact

        try:
            meta, blob = self.store.read_artifact(key)
        except CorruptArtifact:
            self.store.discard_artifact(key)
            raise
        return {**meta, "read_from": "storage"}, blob


# ---------------------------------------------------------------- reporting and process set-up


class Reporter:
    """Collects cell events and sends them in one `tune.report` at most every `REPORT_EVERY_S`."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.last = time.monotonic()

    def add(self, event: dict, now: bool = False) -> None:
        self.events.append(event)
        if now or time.monotonic() - self.last >= REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.events:
            tune.report({RESULT_KEY: json.dumps(self.events)})
            self.events, self.last = [], time.monotonic()


@functools.lru_cache(maxsize=4)
def open_store(uri: str):
    """One RunStore per run and process: a warm process runs many trials, and opening s3:// resolves credentials."""
    from cvmf_ray.store import RunStore

    return RunStore(uri)


_GRIDS: dict[str, dict] = {}


def grid_cells(ref) -> dict:
    """The run's cells, fetched from the object store once per process (a warm process serves many trials)."""
    if ref.hex() not in _GRIDS:
        _GRIDS.clear()
        _GRIDS[ref.hex()] = ray.get(ref)
    return _GRIDS[ref.hex()]


def trial_device() -> str:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _use_trial_cpus() -> None:
    """As many torch threads as CPUs the trial holds: one, or a wide trial's share of idle cores (runner.py)."""
    import torch

    bundle = tune.get_context().get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(bundle.get("CPU", 1))))


def _free_accelerator() -> None:
    """Return cached GPU memory between trials: the process is reused for the next one."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _quiet() -> None:
    # torch.utils._pytree: torchao's deprecated registration of its KernelPreference enum, at every import
    for noisy in ("ray.train", "ray.tune", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torchao")
