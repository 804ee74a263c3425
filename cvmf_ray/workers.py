"""The warm CPU cell workers, and `run_batch`: what executes a batch of cells inside any Ray process.

A CPU-only run executes every cell in one long-lived `CellWorker` per CPU slot: it imports torch,
torchvision and scikit-learn once per grid instead of once per trial (seconds per process on a small
machine). This module imports only Ray (not Ray Tune) so that starting a worker costs no more than that.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import queue
import threading
from collections.abc import Callable

import ray

# what later stages import lazily: a warm worker imports them while the driver starts the next wave
WARM_IMPORTS = (
    "sklearn.metrics",
    "sklearn.svm",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "torchao.quantization.pt2e.quantize_pt2e",
    "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
)


@functools.lru_cache(maxsize=4)
def open_store(uri: str):
    """One RunStore per run directory and process: a warm worker gets a call per cell, and opening a
    remote filesystem (s3://...) resolves credentials each time."""
    from cvmf_ray.store import RunStore

    return RunStore(uri)


def run_batch(config: dict, parents: dict | None, device: str, hooks: Callable | None = None) -> dict:
    """Run the batch's unfinished cells; returns {"failed": {key: error}, "unexpected": [messages]}.

    `hooks(cell)` gives a training cell its `resume` state and `on_epoch` checkpoint callback.
    """
    from cvmf_ray.cells import CellSettings, execute_cell
    from cvmf_ray.errors import CellError
    from cvmf_ray.grid import Cell
    from cvmf_ray.store import StorageFull, decode_weights

    store = open_store(config["run_uri"])
    context = ray.get_runtime_context()
    placement = {"node_id": context.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    settings = CellSettings(config["data_root"], device, config["checkpoint_every"], config["compile"], placement)

    def load_parent(key: str):
        if parents and key in parents:
            meta, blob = ray.get(parents[key])
            return {**meta, "read_from": "object store"}, decode_weights(key, blob)
        meta, tensors = store.load_artifact(key)
        return {**meta, "read_from": "storage"}, tensors

    failed, unexpected = {}, []
    for cell in (Cell(**c) for c in config["batch"]["cells"]):
        if store.is_done(cell.key):
            continue
        try:
            extra = hooks(cell) if hooks is not None and cell.stage == "train" else {}
            execute_cell(cell, store, load_parent, settings, **extra)
        except StorageFull:
            raise
        except CellError as err:
            failed[cell.key] = str(err)
            store.save_failure(cell.key, str(err))
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            unexpected.append(message)
            store.save_failure(cell.key, message)
    return {"failed": failed, "unexpected": unexpected}


def training_hooks(saved: bytes | None, emit: Callable[[int, bytes], None]) -> dict:
    """`resume` from a saved state (tensors only: never unpickle objects) and `on_epoch` that emits states."""
    import torch

    resume = torch.load(io.BytesIO(saved), weights_only=True) if saved is not None else None
    if resume is not None:
        print(f"[cvmf-ray] resuming a training cell from epoch {resume['epoch']}", flush=True)

    def on_epoch(epoch: int, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        emit(epoch, buffer.getvalue())

    return {"resume": resume, "on_epoch": on_epoch}


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class CellWorker:
    """A long-lived CPU process that runs cells for the trial that holds its slot's CPU.

    It asks for no CPU of its own: it only ever works for a trial that holds one and waits on it.
    Ray restarts it when it dies and re-sends the call it was running (cells are skipped once done),
    except `train`, whose retry is Tune's: from the trial's last epoch checkpoint.
    """

    def __init__(self) -> None:
        import torch

        import cvmf_ray.cells  # noqa: F401  (what every cell needs, training included)

        torch.set_num_threads(1)  # as in a 1-CPU trial, so numbers do not depend on where a cell ran
        self.training: threading.Thread | None = None

    def warm(self) -> None:
        """Import what later stages need, called while the driver starts their wave."""
        for module in WARM_IMPORTS:
            importlib.import_module(module)

    def ready(self) -> bool:
        """Returns once the worker is up (after a restart too)."""
        return True

    def run(self, config: dict, parents: dict | None) -> dict:
        self._wait_for_abandoned_training()
        return run_batch(config, parents, device="cpu")

    @ray.method(max_task_retries=0)
    def train(self, config: dict, parents: dict | None, saved: bytes | None):
        """Train the batch's cell, yielding {"epoch", "state"} per checkpoint, then {"outcome"}.

        Training runs in a thread because the epoch callback cannot yield from inside the loop. If the
        calling trial dies, the thread may run on and save the cell (or stop at its next epoch, once Ray
        closes this generator); either way the next call waits for it, so two cells never share the
        process, nor torch's global RNG.
        """
        self._wait_for_abandoned_training()
        items: queue.Queue = queue.Queue()
        caller_gone = threading.Event()

        def emit(epoch: int, state: bytes) -> None:
            if caller_gone.is_set():
                raise CallerGone
            items.put({"epoch": epoch, "state": state})

        def work() -> None:
            try:
                outcome = run_batch(config, parents, device="cpu", hooks=lambda cell: training_hooks(saved, emit))
                items.put({"outcome": outcome})
            except BaseException as err:  # StorageFull and the like: re-raised below, in the caller's task
                items.put({"error": err})

        self.training = threading.Thread(target=work, daemon=True)
        self.training.start()
        try:
            while True:
                item = items.get()
                if "error" in item:
                    raise item["error"]
                yield item
                if "outcome" in item:
                    return
        finally:
            caller_gone.set()

    def _wait_for_abandoned_training(self) -> None:
        if self.training is not None:
            self.training.join()


class CallerGone(BaseException):
    """Stops an abandoned training thread; a BaseException so no cell records it as its failure."""


@ray.remote(num_cpus=0)
class WorkerLeases:
    """Which warm worker each running training trial uses; a retried trial gets its worker back."""

    def __init__(self, count: int) -> None:
        self.holders: list[str | None] = [None] * count

    def acquire(self, trial_id: str) -> int:
        for wanted in (trial_id, None):
            if wanted in self.holders:
                index = self.holders.index(wanted)
                self.holders[index] = trial_id
                return index
        # every worker held: a trial that failed for good never released its own; share one
        return sum(map(ord, trial_id)) % len(self.holders)

    def release(self, trial_id: str) -> None:
        self.holders = [None if holder == trial_id else holder for holder in self.holders]
