"""Expand a `GridConfig` into a de-duplicated DAG of stage cells with content-hash keys.

A cell's key hashes its own parameters and its parent's key, so shared prefixes are computed once:
one `original` per (model, dataset, seed) feeds every method × forget set, every fp32 model feeds every
quant mode, and every model is evaluated once per forget set it is compared on. Pure Python, no Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cvmf_ray.config import GridConfig
from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.methods import resolve_method

STAGES = ("train", "unlearn", "quantize", "evaluate")
CACHE_VERSION = 1  # bump when a stage's numbers change for the same parameters: old artifacts stop matching


def digest(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One unit of work: a stage applied to its parent's output with these parameters."""

    stage: str
    key: str
    parent: str | None
    params: dict = field(hash=False)

    @classmethod
    def make(cls, stage: str, parent: str | None, params: dict) -> Cell:
        return cls(stage, digest([CACHE_VERSION, stage, parent, params]), parent, params)

    def describe(self) -> str:
        p = self.params
        what = {
            "train": "original" if p.get("exclude") is None else f"retrain without {_spec(p['exclude'])}",
            "unlearn": f"{p.get('method')} on {_spec(p['forget'])}" if "forget" in p else "",
            "quantize": f"{p.get('quant')} of {p.get('method')}",
            "evaluate": f"{p.get('method')}/{p.get('quant')} on {_spec(p['forget'])}" if "forget" in p else "",
        }[self.stage]
        return f"{p['model']}/{p['dataset']}/seed {p['seed']}: {what}"


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
        """The cell and all its ancestors, nearest first."""
        chain = []
        while key is not None:
            chain.append(self.cells[key])
            key = chain[-1].parent
        return chain

    def to_json(self) -> dict:
        counts = {s: len(self.stage(s)) for s in STAGES}
        return {"counts": counts, "cells": [asdict(c) for c in self.cells.values()]}


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
    recipe = config.recipe.model_dump(exclude={"checkpoint_every", "compile"})  # neither changes the numbers
    augment = {"crop_padding": config.recipe.crop_padding, "flip": config.recipe.flip}
    for dataset in config.datasets:
        spec = DATASETS.get(dataset)
        for model in config.models:
            for seed in config.seeds:
                base = {"model": model, "dataset": dataset, "seed": seed}
                original = grid.add(Cell.make("train", None, {**base, "recipe": recipe, "exclude": None}))
                for forget in forget_specs(config, spec.num_classes):
                    for method in config.methods:
                        source = _model_source(grid, config, base, original, forget, method, recipe, augment)
                        _add_quantized_and_evaluated(grid, config, base, source, forget, method)
    return grid


def _model_source(grid, config, base, original, forget, method, recipe, augment) -> Cell:
    """The fp32 model a method yields: the original itself, a retrain, or an unlearn cell."""
    if method == "original":
        return original
    if method == "retrain":
        return grid.add(Cell.make("train", None, {**base, "recipe": recipe, "exclude": forget.as_dict()}))
    hparams = resolve_method(method).resolve_params(config.method_params.get(method, {}), config.unlearn_epochs)
    params = {**base, "method": method, "hparams": hparams, "forget": forget.as_dict(), "augment": augment}
    return grid.add(Cell.make("unlearn", original.key, params))


def _add_quantized_and_evaluated(grid, config, base, source, forget, method) -> None:
    identity = {**base, "method": method, "forget": forget.as_dict()}
    for quant in quant_modes(config):
        model_cell = source
        if quant != "fp32":
            params = {**identity, "quant": quant, "calibration_size": config.calibration_size}
            model_cell = grid.add(Cell.make("quantize", source.key, params))
        grid.add(Cell.make("evaluate", model_cell.key, {**identity, "quant": quant}))
