"""What runs inside Ray workers: the Tune function trainable and the reusable CPU cell workers.

This module imports only Ray at the top: a trial that hands its cells to a warm `CellWorker` never pays
for importing torch, torchvision and scikit-learn (seconds per process on a small machine). Heavy imports
happen inside the functions that need them.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path

import ray
from ray import tune

TRAIN_STATE = "train_state.pt"
# what later stages import lazily: a warm worker pays for them once, while the first wave trains
WARM_IMPORTS = (
    "sklearn.metrics",
    "sklearn.svm",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.datasets",
    "torchao.quantization.pt2e.quantize_pt2e",
    "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
)


def stage_trial(config: dict, parents: dict | None = None, workers: list | None = None) -> None:
    """Function trainable: run every unfinished cell of the batch in `config["batch"]["cells"]`.

    CPU-only batches (no training) go to the long-lived worker of their slot; training cells run here,
    because their epoch checkpoints go through `tune.report`. Unexpected errors are re-raised after the
    batch so Tune retries the trial (a retry skips the cells that finished).
    """
    for noisy in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" on every epoch
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if workers and config["stage"] != "train":
        outcome = ray.get(workers[config["batch"]["slot"] % len(workers)].run.remote(config, parents))
    else:
        outcome = run_batch(config, parents, device=trial_device(), hooks=_train_hooks)
    if outcome["unexpected"]:
        raise RuntimeError(f"{len(outcome['unexpected'])} cell(s) raised: " + "; ".join(outcome["unexpected"]))
    tune.report({"cells_failed": len(outcome["failed"])})


def trial_device() -> str:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_batch(config: dict, parents: dict | None, device: str, hooks=None) -> dict:
    """Run the batch's unfinished cells; returns {"failed": {key: error}, "unexpected": [messages]}."""
    from cvmf_ray.cells import CellSettings, execute_cell
    from cvmf_ray.errors import CellError
    from cvmf_ray.grid import Cell
    from cvmf_ray.store import RunStore, StorageFull, decode_weights

    store = RunStore(config["run_uri"])
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


@ray.remote(num_cpus=0, max_restarts=-1)
class CellWorker:
    """A long-lived CPU process for cheap cells: imports torch once per grid, not once per wave.

    It asks for no CPU of its own: it only ever works for a trial that holds one and waits on it.
    """

    def __init__(self) -> None:
        import torch

        import cvmf_ray.cells  # noqa: F401  (warm the imports while the first wave trains)

        for module in WARM_IMPORTS:
            importlib.import_module(module)

        torch.set_num_threads(1)  # as in a 1-CPU trial, so numbers do not depend on where a cell ran

    def run(self, config: dict, parents: dict | None) -> dict:
        return run_batch(config, parents, device="cpu")


def _train_hooks(cell) -> dict:
    """Epoch checkpoints through Tune, so a retried training trial resumes where it stopped."""
    import torch

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / TRAIN_STATE, weights_only=True)  # never unpickle objects
        if state.get("key") == cell.key:
            resume = state
            print(f"[cvmf-ray] resuming training cell {cell.key} from epoch {state['epoch']}", flush=True)

    def on_epoch(epoch: int, state: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save({**state, "key": cell.key}, Path(folder) / TRAIN_STATE)
            tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))

    return {"resume": resume, "on_epoch": on_epoch}
