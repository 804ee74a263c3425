"""Expand a `GridConfig` into a de-duplicated DAG of cells with content-hash keys.

A cell's key hashes its stage, its parameters and the keys it reads, so shared prefixes are computed once:
one `original` per (model, dataset, seed) feeds every method × forget set, every fp32 model feeds every
quant mode, and every model is evaluated once per forget set it is compared on. Pure Python, no Ray.

Five stages: `train` (originals and retrains), `unlearn`, `quantize`, `evaluate`, and `compare`, which sets
each evaluated model beside the retrained gold standard over all seeds (output distances, privacy scores).
A cell's `parent` is what it transforms and must be finished first; its `inputs` are read when they exist
(the original a quantized model's update is measured against, the evaluations a comparison reads): the cell
waits until each has finished or failed, and a failed input only leaves the metrics that need it empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cvmf_ray.config import GridConfig
from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.methods import resolve_method

STAGES = ("train", "unlearn", "quantize", "evaluate", "compare")
CACHE_VERSION = 3  # bump when a stage's numbers change for the same parameters: old artifacts stop matching


def digest(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One unit of work: a stage applied to its parent's output (and optional inputs) with these parameters."""

    stage: str
    key: str
    parent: str | None
    params: dict = field(hash=False)
    inputs: dict[str, str] = field(default_factory=dict, hash=False)  # role -> key of an optional input

    @classmethod
    def make(cls, stage: str, parent: str | None, params: dict, inputs: dict[str, str] | None = None) -> Cell:
        inputs = inputs or {}
        return cls(stage, digest([CACHE_VERSION, stage, parent, params, inputs]), parent, params, inputs)

    @property
    def reads(self) -> list[str]:
        """Every key this cell reads: its parent first, then its inputs (deduplicated)."""
        return list(dict.fromkeys([*([self.parent] if self.parent else []), *self.inputs.values()]))

    def describe(self) -> str:
        p = self.params
        what = {
            "train": lambda: "original" if p["exclude"] is None else f"retrain without {_spec(p['exclude'])}",
            "unlearn": lambda: f"{p['method']} on {_spec(p['forget'])}",
            "quantize": lambda: f"{p['quant']} of {p['method']}",
            "evaluate": lambda: f"{p['method']}/{p['quant']} on {_spec(p['forget'])}",
            "compare": lambda: f"{p['method']}/{p['quant']} vs retrain on {_spec(p['forget'])}",
        }[self.stage]()
        seeds = f"seed {p['seed']}" if "seed" in p else f"seeds {','.join(map(str, p['seeds']))}"
        return f"{p['model']}/{p['dataset']}/{seeds}: {what}"


def _spec(d: dict) -> str:
    return str(ForgetSpec(**d))


@dataclass
class Grid:
    cells: dict[str, Cell]

    def stage(self, stage: str) -> list[Cell]:
        return [c for c in self.cells.values() if c.stage == stage]

    def add(self, cell: Cell) -> Cell:
        return self.cells.setdefault(cell.key, cell)

    def lineage(self, key: str) -> list[Cell]:
        """The cell and all its ancestors through parents, nearest first."""
        chain = []
        while key is not None:
            chain.append(self.cells[key])
            key = chain[-1].parent
        return chain

    @property
    def digest(self) -> str:
        return digest(sorted(self.cells))

    def counts(self) -> dict[str, int]:
        return {s: len(self.stage(s)) for s in STAGES}

    def to_json(self) -> dict:
        return {"counts": self.counts(), "cells": [asdict(c) for c in self.cells.values()]}

    @classmethod
    def from_json(cls, data: dict) -> Grid:
        return cls({c["key"]: Cell(**c) for c in data["cells"]})


def forget_specs(config: GridConfig, num_classes: int) -> list[ForgetSpec]:
    classes = range(num_classes) if config.forget_classes == "all" else config.forget_classes
    return [ForgetSpec("class", int(c)) for c in classes] + [
        ForgetSpec("fraction", float(f)) for f in config.forget_fractions
    ]


def quant_modes(config: GridConfig) -> list[str]:
    """fp32 always comes first: it is every quantized row's reference for the `recovery_*` columns."""
    return ["fp32"] + [q for q in config.quant if q != "fp32"]


def expand_grid(config: GridConfig) -> Grid:
    grid = Grid({})
    for dataset in config.datasets:
        spec = DATASETS.get(dataset)
        trained = config.recipe_for(dataset)
        recipe = trained.model_dump(exclude={"checkpoint_every", "compile"})  # neither changes the numbers
        augment = {"crop_padding": trained.crop_padding, "flip": trained.flip}
        for model in config.models:
            evaluations: dict[tuple, str] = {}  # (forget, method, quant, seed) -> evaluate key
            for seed in config.seeds:
                base = {"model": model, "dataset": dataset, "seed": seed}
                original = grid.add(Cell.make("train", None, {**base, "recipe": recipe, "exclude": None}))
                for forget in forget_specs(config, spec.num_classes):
                    for method in config.methods:
                        source = _model_source(grid, config, base, original, forget, method, recipe, augment)
                        for quant, key in _quantized_and_evaluated(grid, config, base, source, original, forget,
                                                                   method):  # fmt: skip
                            evaluations[(forget, method, quant, seed)] = key
            if "retrain" in config.methods:
                _add_comparisons(grid, config, model, dataset, evaluations)
    return grid


def _model_source(grid, config, base, original, forget, method, recipe, augment) -> Cell:
    """The fp32 model a method yields: the original itself, a retrain, or an unlearn cell."""
    if method == "original":
        return original
    if method == "retrain":
        return grid.add(Cell.make("train", None, {**base, "recipe": recipe, "exclude": forget.as_dict()}))
    overrides = config.method_params.get(method, {})
    hparams = resolve_method(method).resolve_params(overrides, config.unlearn_epochs, base["dataset"])
    params = {**base, "method": method, "hparams": hparams, "forget": forget.as_dict(), "augment": augment}
    return grid.add(Cell.make("unlearn", original.key, params))


def _quantized_and_evaluated(grid, config, base, source, original, forget, method):
    """Yield (quant, evaluate key) for every mode. A quantized unlearnt or retrained model measures its weights'
    distance from the original against the mode's step (`evidence.mechanism`): the retrain's is the baseline
    of an update that truly removed the data."""
    identity = {**base, "method": method, "forget": forget.as_dict()}
    reference = {"reference": original.key} if source is not original else {}
    for quant in quant_modes(config):
        model_cell, evaluate_inputs = source, {}
        if quant != "fp32":
            params = {**identity, "quant": quant, "calibration_size": config.calibration_size}
            model_cell = grid.add(Cell.make("quantize", source.key, params, reference))
            evaluate_inputs = {"source": source.key} if config.relearn else {}
        relearn = {"relearn": config.relearn_params.model_dump()} if config.relearn else {}
        params = {**identity, "quant": quant, **relearn}
        yield quant, grid.add(Cell.make("evaluate", model_cell.key, params, evaluate_inputs)).key


def _add_comparisons(grid, config, model, dataset, evaluations: dict[tuple, str]) -> None:
    """One compare cell per (forget set, method, quant): every seed's model beside that seed's retrain model in
    the same quant mode."""
    groups = {(forget, method, quant) for forget, method, quant, _ in evaluations}
    for forget, method, quant in sorted(groups, key=str):
        inputs = {}
        for seed in config.seeds:
            inputs[f"model:{seed}"] = evaluations[(forget, method, quant, seed)]
            inputs[f"retrain:{seed}"] = evaluations[(forget, "retrain", quant, seed)]
        params = {"model": model, "dataset": dataset, "seeds": list(config.seeds), "method": method,
                  "quant": quant, "forget": forget.as_dict()}  # fmt: skip
        grid.add(Cell.make("compare", None, params, inputs))
