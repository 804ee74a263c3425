"""Execute one grid cell: load its parent, call the stage function, save the artifact. No Ray in here.

The Ray layer (runner.py) decides where a cell runs and how its parent's weights arrive (a driver-owned
object ref or the artifact on storage); this module only needs a `load_parent(key)` callable.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import Augment
from cvmf_ray.datasets import DATASETS, ImageData
from cvmf_ray.forget import ForgetSpec, forget_mask, split_data
from cvmf_ray.grid import Cell
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES, tensor_bytes
from cvmf_ray.stages import evaluate, quantize, train, unlearn
from cvmf_ray.stages.quantize import calibration_images
from cvmf_ray.store import RunStore

ParentLoader = Callable[[str], tuple[dict, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class CellSettings:
    """Run-time settings that do not change a cell's result (and so are not part of its key)."""

    data_root: str
    device: str = "cpu"
    checkpoint_every: int = 1
    compile: bool = False
    placement: dict | None = None  # where the cell ran (node, pid, GPU ids): recorded in its meta


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, root: str) -> ImageData:
    """Cached per worker process: a batch of cells on one dataset reads it once."""
    return DATASETS.get(name).load_data(root)


def build_model(params: dict) -> nn.Module:
    spec = DATASETS.get(params["dataset"])
    return create_model(params["model"], spec.in_channels, spec.num_classes)


def restore_model(meta: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild an fp32 or quantized model from its artifact, in eval mode."""
    model = build_model(meta["params"]).eval()
    return QUANT_MODES.get(meta["quant"]).restore(model, tensors).eval()


def execute_cell(
    cell: Cell,
    store: RunStore,
    load_parent: ParentLoader,
    settings: CellSettings,
    *,
    resume: dict | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict:
    """Run `cell`, save its artifact, return its metrics."""
    p = cell.params
    torch.manual_seed(p["seed"])
    data = load_dataset(p["dataset"], settings.data_root)
    forget = ForgetSpec(**p["forget"]) if "forget" in p else None
    device = settings.device
    parent_meta, parent_tensors = load_parent(cell.parent) if cell.parent is not None else ({}, {})
    parent_source = parent_meta.get("read_from")
    quant = "fp32"
    if cell.stage == "train":
        exclude = forget_mask(ForgetSpec(**p["exclude"]), data.train_y, p["seed"]) if p["exclude"] else None
        recipe = TrainRecipe(**p["recipe"], checkpoint_every=settings.checkpoint_every, compile=settings.compile)
        model = build_model(p)
        started_at = time.time()
        model, metrics = train(model, data, recipe, p["seed"], exclude, device=device, resume=resume, on_epoch=on_epoch)
        metrics["resumed_from_epoch"] = int(resume["epoch"]) if resume else 0
        tensors = model.state_dict()
    elif cell.stage == "unlearn":
        model = restore_model(parent_meta, parent_tensors)
        started_at = time.time()
        model, metrics = unlearn(
            model,
            data,
            forget,
            p["method"],
            p["hparams"],
            seed=p["seed"],
            augment=Augment(**p["augment"]),
            device=device,
        )
        tensors = model.state_dict()
    elif cell.stage == "quantize":
        model = restore_model(parent_meta, parent_tensors)
        calibration = calibration_images(data, forget, p["seed"], p["calibration_size"])
        started_at = time.time()
        qmodel, metrics = quantize(model, p["quant"], calibration)
        quant, tensors = p["quant"], QUANT_MODES.get(p["quant"]).state_dict(qmodel)
    else:
        model = restore_model(parent_meta, parent_tensors).to(device)
        started_at = time.time()
        metrics = evaluate(model, split_data(data, forget, p["seed"]), data.mean, data.std, device=device)
        quant, tensors = parent_meta["quant"], None
    finished_at = time.time()  # the stage function's own span, for scripts/bench_grid.py
    if tensors is not None and "model_bytes" not in metrics:
        metrics["model_bytes"] = tensor_bytes(tensors)
    meta = {"stage": cell.stage, "parent": cell.parent, "params": p, "quant": quant, "metrics": metrics}
    meta["interval"] = [started_at, finished_at]
    meta["placement"] = {**(settings.placement or {}), "device": str(device), "parent_read_from": parent_source}
    store.save_artifact(cell.key, meta, tensors)
    return metrics
