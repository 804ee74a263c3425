"""Run one grid cell: load what it reads, call its stage, return its artifact. No Ray and no storage in here.

The Ray layer (trial.py) decides where a cell runs, how the artifacts it reads arrive (from this node's object
store or from storage) and where its artifact goes; this module only needs a `load(key)` callable. Every
artifact's meta carries its ancestors' metrics (`lineage`), so an evaluate cell writes its whole results row
without reading anything else.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cvmf_ray.config import TUNED, RelearnParams, TrainRecipe
from cvmf_ray.data import Augment
from cvmf_ray.datasets import DATASETS, ImageData
from cvmf_ray.errors import CellError, Diverged, MissingInput
from cvmf_ray.evidence.mechanism import quant_update, quantized_weight_names
from cvmf_ray.evidence.relearn import dequantized_copy, relearn
from cvmf_ray.forget import ForgetSpec, forget_mask, forget_masks, retain_sample
from cvmf_ray.grid import Cell
from cvmf_ray.meter import Meter
from cvmf_ray.models import create_model, model_info
from cvmf_ray.objective import WORST, best_trial, diverged, mean_over_seeds
from cvmf_ray.quant import QUANT_MODES, tensor_bytes
from cvmf_ray.stages import compare, evaluate, quantize, reestimate_batchnorm, train, unlearn
from cvmf_ray.stages.quantize import calibration_images
from cvmf_ray.stages.tune import Holdout, TuningSamples, holdout, probe
from cvmf_ray.store import OUTPUTS, WEIGHTS, CorruptArtifact

Loader = Callable[[str], tuple[dict, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class CellSettings:
    """Run-time settings that do not change a cell's result (and so are not part of its key)."""

    data_root: str
    device: str = "cpu"
    checkpoint_every: int = 1
    compile: bool = False
    placement: dict | None = None  # where the cell ran (node, pid, GPU ids): recorded in its meta


@dataclass
class Artifact:
    """What a cell leaves: its meta and, for most stages, one safetensors file."""

    meta: dict
    tensor_file: str | None = None
    blob: bytes = b""


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, root: str) -> ImageData:
    """Cached per process: a warm trial process evaluating many cells of one dataset reads it once."""
    return DATASETS.get(name).load_data(root)


@functools.lru_cache(maxsize=2)
def load_split(name: str, root: str, fraction: float, seed: int) -> tuple[ImageData, tuple]:
    """A tuning grid's data: the training set without its validation split, and the split (stages/tune.py)."""
    return holdout(load_dataset(name, root), Holdout(fraction, seed))


def cell_data(params: dict, root: str) -> tuple[ImageData, tuple | None]:
    """What a cell computes on: the dataset, less the validation split in a tuning grid (then also the split)."""
    if "holdout" in params:
        return load_split(params["dataset"], root, **params["holdout"])
    return load_dataset(params["dataset"], root), None


def build_model(params: dict) -> nn.Module:
    spec = DATASETS.get(params["dataset"])
    return create_model(params["model"], spec.in_channels, spec.num_classes)


def restore_model(meta: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild an fp32 or quantized model from its artifact, in eval mode."""
    model = build_model(meta["params"]).eval()
    return QUANT_MODES.get(meta["quant"]).restore(model, tensors).eval()


def decode(key: str, blob: bytes) -> dict[str, torch.Tensor]:
    """safetensors bytes -> tensors; anything else (a planted pickle, say) is a damaged artifact."""
    if not blob:
        return {}
    try:
        return load_safetensors(blob)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CorruptArtifact(key, f"artifact {key} is not a valid safetensors file ({err})") from None


def encode(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def lineage_of(meta: dict) -> dict:
    """A reader's lineage: its parent's, plus the parent's own metrics (and hyperparameters, for unlearning)."""
    entry = {"key": meta["key"], "metrics": meta["metrics"]}
    if meta["stage"] == "unlearn":  # a tuned method's values are its study's choice, in its metrics
        entry["hparams"] = meta["metrics"]["tuned"]["hparams"] if "study" in meta["params"] else meta["params"][
            "hparams"]  # fmt: skip
    return {**meta.get("lineage", {}), meta["stage"]: entry}


@dataclass
class Job:
    """Everything a stage runner gets: the cell, its data, its parent's artifact, a loader for its inputs."""

    cell: Cell
    data: ImageData
    parent_meta: dict
    parent_tensors: dict[str, torch.Tensor]
    load: Loader
    settings: CellSettings
    resume: dict | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    meter: Meter | None = None  # progress inside a training or unlearning cell
    validation: tuple | None = None  # a tuning grid's validation split (images, labels)
    hparams: dict | None = None  # a tuning trial's values, from its study's searcher

    @property
    def params(self) -> dict:
        return self.cell.params


@dataclass
class StageOutput:
    metrics: dict
    quant: str = "fp32"  # the mode the artifact's tensors are in
    tensors: dict[str, torch.Tensor] | None = None
    tensor_file: str | None = None


def execute_cell(
    cell: Cell,
    load: Loader,
    settings: CellSettings,
    *,
    resume: dict | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    meter: Meter | None = None,
    hparams: dict | None = None,
) -> Artifact:
    """Run `cell` and return its artifact (the caller saves it); `meter` follows a training or unlearning, and a
    tuning trial runs with `hparams`."""
    torch.manual_seed(cell.params.get("seed", 0))
    data, validation = cell_data(cell.params, settings.data_root)
    parent_meta, parent_tensors = load(cell.parent) if cell.parent is not None else ({}, {})
    job = Job(cell, data, parent_meta, parent_tensors, load, settings, resume=resume, on_epoch=on_epoch, meter=meter,
              validation=validation, hparams=hparams)  # fmt: skip
    started_at = time.time()
    out = STAGE_RUNNERS[cell.stage](job)
    finished_at = time.time()  # the stage function's own span, for scripts/bench_grid.py
    if out.tensor_file == WEIGHTS and "model_bytes" not in out.metrics:
        out.metrics["model_bytes"] = tensor_bytes(out.tensors)
    meta = {"stage": cell.stage, "parent": cell.parent, "params": cell.params, "quant": out.quant,
            "metrics": out.metrics, "interval": [started_at, finished_at],
            "placement": {**(settings.placement or {}), "device": settings.device,
                          "parent_read_from": parent_meta.get("read_from")}}  # fmt: skip
    if parent_meta:
        meta["lineage"] = lineage_of(parent_meta)
    return Artifact(meta, out.tensor_file, encode(out.tensors) if out.tensor_file else b"")


def _train(job: Job) -> StageOutput:
    p = job.params
    exclude = forget_mask(ForgetSpec(**p["exclude"]), job.data.train_y, p["seed"]) if p["exclude"] else None
    recipe = TrainRecipe(**p["recipe"], checkpoint_every=job.settings.checkpoint_every, compile=job.settings.compile)
    model, metrics = train(build_model(p), job.data, recipe, p["seed"], exclude, device=job.settings.device,
                           resume=job.resume, on_epoch=job.on_epoch, meter=job.meter)  # fmt: skip
    metrics["resumed_from_epoch"] = int(job.resume["epoch"]) if job.resume else 0
    return StageOutput(metrics, "fp32", model.state_dict(), WEIGHTS)


def _unlearn(job: Job) -> StageOutput:
    p = job.params
    tuned = _chosen(job) if "study" in p else None
    model = restore_model(job.parent_meta, job.parent_tensors)
    model, metrics = _unlearn_model(job, model, p["seed"], tuned["hparams"] if tuned else p["hparams"])
    if tuned:
        metrics["tuned"] = tuned
    return StageOutput(metrics, "fp32", model.state_dict(), WEIGHTS)


def _unlearn_model(job: Job, model: nn.Module, seed: int, hparams: dict) -> tuple[nn.Module, dict]:
    p = job.params
    return unlearn(model, job.data, ForgetSpec(**p["forget"]), p["method"].removesuffix(TUNED), hparams, seed=seed,
                   augment=Augment(**p["augment"]), device=job.settings.device, meter=job.meter,
                   frozen_bn=p.get("unlearn_bn") == "frozen", last_block=model_info(p["model"]).last_block)  # fmt: skip


def _chosen(job: Job) -> dict:
    """The study's choice, from its trials' metas (`objective.best_trial`): {"study", "trial", "objective",
    "hparams", "trials"}, `trials` the numbers of those that had finished (the driver reruns this cell when
    another finishes later). A failed trial (a missing input) or a diverged one is never chosen."""
    trials = {}
    for name, key in job.cell.inputs.items():
        try:
            trials[int(name.removeprefix("trial:"))] = job.load(key)[0]["metrics"]
        except MissingInput:
            continue
    number = best_trial(trials)
    if number is None:
        raise CellError(f"no trial of study {job.params['study']} finished without diverging ({len(trials)} of "
                        f"{len(job.cell.inputs)} ran): nothing to choose from")  # fmt: skip
    return {"study": job.params["study"], "trial": number, "objective": trials[number]["objective"],
            "hparams": trials[number]["hparams"], "trials": sorted(trials)}  # fmt: skip


def _tune(job: Job) -> StageOutput:
    """One tuning trial: unlearn each tuning seed's original with the suggested values, score against the
    seed's retrain on bounded samples of the validation split and the training set (stages/tune.py)."""
    p, data, device = job.params, job.data, job.settings.device
    per_seed, unlearn_seconds, eval_seconds = [], 0.0, 0.0
    for seed in p["seeds"]:
        samples = TuningSamples.draw(data, job.validation, ForgetSpec(**p["forget"]), seed, p["samples"])
        original = restore_model(*_required(job, f"original:{seed}"))
        try:
            model, metrics = _unlearn_model(job, original, seed, job.hparams)
        except Diverged as err:  # the worst score, and the searcher learns so
            return StageOutput({"status": "diverged", "error": str(err), "hparams": job.hparams,
                                "objective": WORST, "unlearn_seconds": unlearn_seconds})  # fmt: skip
        unlearn_seconds += metrics["unlearn_seconds"]
        started = time.perf_counter()
        probed = probe(model.to(device), samples, data.mean, data.std, device)
        eval_seconds += time.perf_counter() - started
        retrain = _retrain_probe(job, f"retrain:{seed}", samples)
        per_seed.append({**probed, **{f"retrain_{name}": value for name, value in retrain.items()}})
    scored = mean_over_seeds(per_seed)
    outcome = {"status": "ok"}
    if diverged(scored):
        outcome = {"status": "diverged", "error": "the unlearnt model's outputs are not finite (NaN or inf)"}
    finite = {k: v if v is None or math.isfinite(v) else None for k, v in scored.items()}  # JSON has no NaN
    return StageOutput({**outcome, **finite, "hparams": job.hparams, "unlearn_seconds": unlearn_seconds,
                        "eval_seconds": eval_seconds})  # fmt: skip


def _required(job: Job, role: str) -> tuple[dict, dict]:
    """A trial's original or retrain: without it there is nothing to score."""
    try:
        return job.load(job.cell.inputs[role])
    except MissingInput:
        raise CellError(f"its {role.split(':')[0]} (seed {role.split(':')[1]}) did not finish") from None


_RETRAIN_PROBES: dict[tuple, dict] = {}  # (retrain key, cap) -> its probe: a warm process scores many trials by it
RETRAIN_PROBES_KEPT = 64  # a few hundred bytes each


def _retrain_probe(job: Job, role: str, samples: TuningSamples) -> dict:
    cached = (job.cell.inputs[role], job.params["samples"])
    if cached not in _RETRAIN_PROBES:
        if len(_RETRAIN_PROBES) >= RETRAIN_PROBES_KEPT:
            _RETRAIN_PROBES.clear()
        model = restore_model(*_required(job, role)).to(job.settings.device)
        _RETRAIN_PROBES[cached] = probe(model, samples, job.data.mean, job.data.std, job.settings.device)
    return _RETRAIN_PROBES[cached]


def _reestimate(job: Job) -> StageOutput:
    """BatchNorm re-estimation on the images a deployer would have (`BN_SOURCES` in cvmf_ray/config.py)."""
    p, data = job.params, job.data
    images = data.train_x, data.train_y
    if p["bn_reestimate"] != "train":  # retain: the training set after deletion; test: held out, class removed
        train_forget, test_forget = forget_masks(data, ForgetSpec(**p["forget"]), p["seed"])
        x, y, forget = (data.train_x, data.train_y, train_forget) if p["bn_reestimate"] == "retain" else (
            data.test_x, data.test_y, test_forget)  # fmt: skip
        images = x[~forget], y[~forget]
    model = restore_model(job.parent_meta, job.parent_tensors)
    model, metrics = reestimate_batchnorm(
        model, *images, data.mean, data.std, batches=p["batches"], batch_size=p["batch_size"], seed=p["seed"],
        device=job.settings.device,
    )  # fmt: skip
    return StageOutput(metrics, "fp32", model.state_dict(), WEIGHTS)


def _quantize(job: Job) -> StageOutput:
    p = job.params
    model = restore_model(job.parent_meta, job.parent_tensors)
    calibration = calibration_images(job.data, ForgetSpec(**p["forget"]), p["seed"], p["calibration_size"])
    mode = QUANT_MODES.get(p["quant"])
    update = {}
    if "reference" in job.cell.inputs:  # the original it was unlearnt from, or the retrain's counterpart
        original = job.load(job.cell.inputs["reference"])[1]
        update = quant_update(original, model.state_dict(), quantized_weight_names(model), mode.quantize_weight)
        update["quant_update_per_layer"] = json.dumps(update["quant_update_per_layer"])
    qmodel, metrics = quantize(model, p["quant"], calibration)
    return StageOutput({**metrics, **update}, p["quant"], mode.state_dict(qmodel), WEIGHTS)


def _evaluate(job: Job) -> StageOutput:
    p, data, device = job.params, job.data, job.settings.device
    model = restore_model(job.parent_meta, job.parent_tensors).to(device)
    train_forget, test_forget = forget_masks(data, ForgetSpec(**p["forget"]), p["seed"])
    bounded = "retain_images" in p
    inferred = retain_sample(train_forget, test_forget, p["retain_images"], p["seed"]) if bounded else None
    metrics, logits = evaluate(model, data, train_forget, test_forget, inferred=inferred, device=device)
    if "relearn" in p:
        metrics.update(_relearn(job, model))
    return StageOutput(metrics, job.parent_meta["quant"], logits, OUTPUTS)


def _relearn(job: Job, model: nn.Module) -> dict:
    """Relearn time from the evaluated model; a quantized one relearns from its grid's weights in fp32 (the
    mode's `quantize_weight` applied to its fp32 source), since quantized layers do not train."""
    p, data = job.params, job.data
    if job.parent_meta["quant"] != "fp32":
        source_meta, source_tensors = job.load(job.cell.inputs["source"])
        quantize_weight = QUANT_MODES.get(job.parent_meta["quant"]).quantize_weight
        model = dequantized_copy(restore_model(source_meta, source_tensors), quantize_weight)
    forget = forget_mask(ForgetSpec(**p["forget"]), data.train_y, p["seed"])
    params = RelearnParams(**p["relearn"])
    return relearn(model, data.train_x[forget], data.train_y[forget], data.mean, data.std, params,
                   device=job.settings.device)  # fmt: skip


def _compare(job: Job) -> StageOutput:
    return StageOutput(compare(job.cell, job.data, job.load))


STAGE_RUNNERS: dict[str, Callable[[Job], StageOutput]] = {
    "train": _train, "tune": _tune, "unlearn": _unlearn, "reestimate": _reestimate, "quantize": _quantize,
    "evaluate": _evaluate, "compare": _compare,
}  # fmt: skip
