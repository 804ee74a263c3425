"""The Tune function trainable: what each trial of a stage wave does.

On a CPU-only run every cell executes in a warm `CellWorker` (workers.py) and a trial only dispatches:
a training trial streams its cell's epoch checkpoints back from its worker to `tune.report`; any other
wave is one trial that holds every slot's CPU and hands cells to whichever worker is free, so slow cells
(int8 inference) never leave a core idle. With GPUs, trials run their cells in their own process, on the
GPU Ray assigned them.

This module imports only Ray at the top: heavy imports happen inside the functions that need them.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import ray
from ray import tune

from cvmf_ray.workers import run_batch, training_hooks

TRAIN_STATE = "train_state.pt"
CELL_KEY = "cell_key"


def stage_trial(config: dict, parents: dict | None = None, workers: list | None = None, leases=None) -> None:
    """Function trainable: run every unfinished cell of the batch in `config["batch"]["cells"]`.

    Unexpected errors are re-raised after the batch so Tune retries the trial (a retry skips the cells
    that finished, and a training cell resumes from its last epoch checkpoint).
    """
    for noisy in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" on every epoch
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not workers:
        outcome = run_batch(config, parents, device=trial_device(), hooks=_in_process_training)
    elif config["stage"] == "train":
        outcome = _train_on_warm_worker(config, parents, workers, leases)
    else:
        outcome = _spread_over_warm_workers(config, parents, workers)
    if outcome["unexpected"]:
        raise RuntimeError(f"{len(outcome['unexpected'])} cell(s) raised: " + "; ".join(outcome["unexpected"]))
    tune.report({"cells_failed": len(outcome["failed"])})


def trial_device() -> str:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _spread_over_warm_workers(config: dict, parents: dict | None, workers: list) -> dict:
    """Hand the batch's cells one at a time to whichever worker is free; report progress per cell."""
    waiting = list(config["batch"]["cells"])
    running: dict = {}
    outcome: dict = {"failed": {}, "unexpected": []}

    def hand_next_cell_to(worker) -> None:
        running[worker.run.remote({**config, "batch": {"cells": [waiting.pop(0)]}}, parents)] = worker

    for worker in workers[: len(waiting)]:
        hand_next_cell_to(worker)
    finished = 0
    while running:
        [ref], _ = ray.wait(list(running))
        worker = running.pop(ref)
        if waiting:
            hand_next_cell_to(worker)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:  # the worker died: Ray restarts it, Tune retries this trial
            result = {"failed": {}, "unexpected": [f"{type(err).__name__}: {str(err).splitlines()[0]}"]}
        outcome["failed"].update(result["failed"])
        outcome["unexpected"] += result["unexpected"]
        finished += 1
        if running:
            tune.report({"cells_done": finished})
    return outcome


def _train_on_warm_worker(config: dict, parents: dict | None, workers: list, leases) -> dict:
    """Lease a free worker and relay its epoch checkpoints to Tune until the cell is trained."""
    (cell,) = config["batch"]["cells"]
    trial_id = tune.get_context().get_trial_id()
    worker = workers[ray.get(leases.acquire.remote(trial_id))]
    ray.get(worker.ready.remote())  # waits while Ray restarts a worker that died
    try:
        for ref in worker.train.remote(config, parents, _saved_training(cell["key"])):
            item = ray.get(ref)
            if "outcome" in item:
                return item["outcome"]
            _report_epoch(cell["key"], item["epoch"], item["state"])
    finally:
        leases.release.remote(trial_id)
    raise RuntimeError("the worker stopped before the training cell finished")


def _saved_training(cell_key: str) -> bytes | None:
    """The training state of this trial's last epoch checkpoint, if it belongs to `cell_key`."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        key_file, state_file = Path(folder) / CELL_KEY, Path(folder) / TRAIN_STATE
        if not key_file.exists() or key_file.read_text() != cell_key:
            return None
        return state_file.read_bytes()


def _report_epoch(cell_key: str, epoch: int, state: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / TRAIN_STATE).write_bytes(state)
        (Path(folder) / CELL_KEY).write_text(cell_key)
        tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))


def _in_process_training(cell) -> dict:
    """Training inside the trial itself (GPU runs): checkpoints go straight to `tune.report`."""
    return training_hooks(_saved_training(cell.key), lambda epoch, state: _report_epoch(cell.key, epoch, state))
