"""Expand a `GridConfig` into a de-duplicated DAG of cells with content-hash keys.

A cell's key hashes its stage, its parameters and the keys it reads, so shared prefixes are computed once:
one `original` per (model, dataset, seed) feeds every method × forget set, every fp32 model feeds every
quant mode, and every model is evaluated once per forget set it is compared on. Pure Python, no Ray.

Seven stages: `train` (originals and retrains), `tune` (one trial of a study tuning a method against retrain,
`--tune`), `unlearn`, `reestimate` (a deployment step that re-estimates BatchNorm statistics, `--bn-reestimate`),
`quantize`, `evaluate`, and `compare`, which sets each evaluated model beside the retrained gold standard over all
seeds (output distances, privacy scores). A combination
that cannot apply (BatchNorm steps on a model without BatchNorm) has no cells: the grid lists it under
`skipped`, and the results table gives it a row that says why (status `not_applicable`).
A cell's `parent` is what it transforms and must be finished first; its `inputs` are read when they exist
(the original a quantized model's update is measured against, the evaluations a comparison reads): the cell
waits until each has finished or failed, and a failed input only leaves the metrics that need it empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from cvmf_ray.config import TUNED, GridConfig
from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.methods import resolve_method
from cvmf_ray.models import model_info
from cvmf_ray.search_space import method_space

STAGES = ("train", "tune", "unlearn", "reestimate", "quantize", "evaluate", "compare")
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
            "tune": lambda: f"tuning {p['method']} on {_spec(p['forget'])}, trial {p['trial']}",
            "unlearn": lambda: f"{p['method']}{_bn(p)} on {_spec(p['forget'])}",
            "reestimate": lambda: f"BatchNorm re-estimated on {p['bn_reestimate']} of {p['method']}{_bn(p)}",
            "quantize": lambda: f"{p['quant']} of {p['method']}{_bn(p)}",
            "evaluate": lambda: f"{p['method']}/{p['quant']}{_bn(p)} on {_spec(p['forget'])}",
            "compare": lambda: f"{p['method']}/{p['quant']}{_bn(p)} vs retrain on {_spec(p['forget'])}",
        }[self.stage]()
        seeds = p.get("seed", p.get("seeds"))  # a compare or tune cell reads several seeds
        seeds = f"seed {seeds}" if isinstance(seeds, int) else f"seeds {','.join(map(str, seeds))}"
        return f"{p['model']}/{p['dataset']}/{seeds}: {what}"


def _spec(d: dict) -> str:
    return str(ForgetSpec(**d))


def _bn(params: dict) -> str:
    """' (BN frozen)', ' + BN re-estimated on train': the BatchNorm treatments a cell's parameters name."""
    frozen = f" (BN {params['unlearn_bn']})" if params.get("unlearn_bn") else ""
    step = params.get("bn_reestimate", "none")
    return frozen + (f" + BN re-estimated on {step}" if step != "none" and "quant" in params else "")


@dataclass
class Grid:
    cells: dict[str, Cell]
    # key -> {"params": a row's identity, "reason"}: combinations that cannot apply, so have no cells
    skipped: dict[str, dict] = field(default_factory=dict)

    def stage(self, stage: str) -> list[Cell]:
        return [c for c in self.cells.values() if c.stage == stage]

    def stage_keys(self, stage: str) -> list[str]:
        return [c.key for c in self.stage(stage)]

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
        return digest(sorted(self.cells) + sorted(self.skipped))

    def counts(self) -> dict[str, int]:
        return {s: len(self.stage(s)) for s in STAGES}

    def skip(self, params: dict, reason: str) -> None:
        self.skipped[digest(["not_applicable", params])] = {"params": params, "reason": reason}

    def to_json(self) -> dict:
        return {"counts": self.counts(), "cells": [asdict(c) for c in self.cells.values()], "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict) -> Grid:
        return cls({c["key"]: Cell(**c) for c in data["cells"]}, data.get("skipped", {}))


def forget_specs(config: GridConfig, num_classes: int) -> list[ForgetSpec]:
    classes = range(num_classes) if config.forget_classes == "all" else config.forget_classes
    return [ForgetSpec("class", int(c)) for c in classes] + [
        ForgetSpec("fraction", float(f)) for f in config.forget_fractions
    ]


def quant_modes(config: GridConfig) -> list[str]:
    """fp32 always comes first: it is every quantized row's reference for the `recovery_*` columns."""
    return ["fp32"] + [q for q in config.quant if q != "fp32"]


@dataclass(frozen=True)
class Recipes:
    """What one dataset's cells are made with: its training recipe, augmentation and BatchNorm step sizes."""

    recipe: dict
    augment: dict
    reestimation: dict

    @classmethod
    def of(cls, config: GridConfig, dataset: str) -> Recipes:
        trained = config.recipe_for(dataset)
        return cls(
            trained.model_dump(exclude={"checkpoint_every", "compile"}),  # neither changes the numbers
            {"crop_padding": trained.crop_padding, "flip": trained.flip},
            {"batches": config.bn_reestimate_batches,
             "batch_size": config.bn_reestimate_batch_size or trained.batch_size},
        )  # fmt: skip


def expand_grid(config: GridConfig) -> Grid:
    grid = Grid({})
    for dataset in config.datasets:
        recipes, spec = Recipes.of(config, dataset), DATASETS.get(dataset)
        for model in config.models:
            evaluations: dict[tuple, str] = {}  # (forget, method, unlearn_bn, bn_reestimate, quant, seed) -> key
            studies = {(forget, method): _add_study(grid, config, recipes, model, dataset, forget, method)
                       for forget in forget_specs(config, spec.num_classes) for method in config.tuned}  # fmt: skip
            for seed in config.seeds:
                base = _base(config, model, dataset, seed)
                original = grid.add(_training(base, recipes, None))
                for forget in forget_specs(config, spec.num_classes):
                    for method in methods_on_seed(config, seed):
                        study = studies[(forget, method.removesuffix(TUNED))] if method.endswith(TUNED) else None
                        for unlearn_bn in unlearn_bn_values(config, method):
                            for group, key in _treated(grid, config, recipes, base, original, forget, method,
                                                       unlearn_bn, study):  # fmt: skip
                                evaluations[(*group, seed)] = key
            if "retrain" in config.methods:
                _add_comparisons(grid, config, model, dataset, evaluations)
    return grid


def _base(config: GridConfig, model: str, dataset: str, seed: int) -> dict:
    """What every cell of one (model, dataset, seed) shares; a tuning grid's cells all leave out its validation
    split (`holdout`), so no model of it ever trains on the images trials are scored on."""
    holdout = config.holdout
    return {"model": model, "dataset": dataset, "seed": seed, **({"holdout": holdout} if holdout else {})}


def _training(base: dict, recipes: Recipes, exclude: ForgetSpec | None) -> Cell:
    """An original (`exclude` None) or the retrain without `exclude`."""
    return Cell.make("train", None, {**base, "recipe": recipes.recipe, "exclude": exclude and exclude.as_dict()})


def methods_on_seed(config: GridConfig, seed: int) -> list[str]:
    """The grid's methods, and METHOD@tuned for each tuned one on the seeds its search did not run on."""
    tuned = [] if seed in config.tuning_seeds else [f"{method}{TUNED}" for method in config.tuned]
    return [*config.methods, *tuned]


def _add_study(grid, config, recipes: Recipes, model: str, dataset: str, forget: ForgetSpec, method: str) -> dict:
    """A study's trial cells: trial i unlearns every tuning seed's original with values its searcher suggests
    when the trial starts (cvmf_ray/studies.py) and is scored against that seed's retrain. The number of trials is
    not part of a trial's key, so a study given more trials keeps those it ran. Returns {"key", "trials"}."""
    resolved = resolve_method(method)
    seeds = config.tuning_seeds
    space = method_space(resolved, recipes.recipe["epochs"], config.tune.spaces.get(method))
    study = {"model": model, "dataset": dataset, "forget": forget.as_dict(), "method": method,
             "holdout": config.holdout, "augment": recipes.augment, "seeds": seeds, "space": space,
             "samples": config.tune.samples,
             "published": resolved.every_value(resolved.resolve_params(config.method_params.get(method, {}),
                                                                       config.unlearn_epochs, dataset))}  # fmt: skip
    study_key = digest(study)
    inputs = {}
    for seed in seeds:
        base = _base(config, model, dataset, seed)
        inputs[f"original:{seed}"] = grid.add(_training(base, recipes, None)).key
        inputs[f"retrain:{seed}"] = grid.add(_training(base, recipes, forget)).key
    trials = [grid.add(Cell.make("tune", None, {**study, "study": study_key, "trial": i}, inputs)).key
              for i in range(config.tune.trials)]  # fmt: skip
    return {"key": study_key, "trials": trials}


def _treated(grid, config, recipes, base, original, forget, method, unlearn_bn, study):
    """Yield ((forget, method, unlearn_bn, bn_reestimate, quant), evaluate key) for one method under one BatchNorm
    treatment, through every deployment step; what cannot apply to the model is skipped with its reason."""
    batchnorm = model_info(base["model"]).batchnorm  # a plug-in is taken to have it: its cells say if not
    treated = {**base, "method": method, "forget": forget.as_dict(),
               **_non_default(unlearn_bn=(unlearn_bn, ("train", None)))}  # fmt: skip
    source = None
    for step in config.bn_reestimate:
        identity = {**treated, **_non_default(bn_reestimate=(step, ("none",)))}
        if not batchnorm and (unlearn_bn == "frozen" or step != "none"):
            what = "the BN-frozen control" if unlearn_bn == "frozen" else "BatchNorm re-estimation"
            for quant in quant_modes(config):
                grid.skip({**identity, "quant": quant}, f"{base['model']} has no BatchNorm: {what} does not apply")
            continue
        source = source or _model_source(grid, config, base, original, forget, method, unlearn_bn, recipes, study)
        deployed = source if step == "none" else grid.add(Cell.make(
            "reestimate", source.key, {**identity, **recipes.reestimation}))  # fmt: skip
        for quant, key in _quantized_and_evaluated(grid, config, identity, source, deployed, original):
            yield (forget, method, unlearn_bn, step, quant), key


def unlearn_bn_values(config: GridConfig, method: str) -> list[str | None]:
    """A row's `unlearn_bn`: None for `original` and `retrain` (nothing unlearnt), `eval` for a method that never
    trains BatchNorm (the control is the method itself), else each value of `--unlearn-bn`."""
    if method in ("original", "retrain"):
        return [None]
    return list(config.unlearn_bn) if resolve_method(method.removesuffix(TUNED)).trains_bn else ["eval"]


def _non_default(**values: tuple) -> dict:
    """{name: value} for each value that is not among its defaults: a default adds nothing to a cell's parameters,
    so the keys of grids without these axes stay as they were (their artifacts stay valid)."""
    return {name: value for name, (value, defaults) in values.items() if value not in defaults}


def _model_source(grid, config, base, original, forget, method, unlearn_bn, recipes: Recipes, study) -> Cell:
    """The fp32 model a method yields: the original itself, a retrain, or an unlearn cell. A tuned method's unlearn
    cell reads its study's trials and runs with the chosen trial's values (cells.py)."""
    if method == "original":
        return original
    if method == "retrain":
        return grid.add(_training(base, recipes, forget))
    params = {**base, "method": method, "forget": forget.as_dict(), "augment": recipes.augment,
              **_non_default(unlearn_bn=(unlearn_bn, ("train",)))}  # fmt: skip
    if study is not None:
        trials = {f"trial:{i}": key for i, key in enumerate(study["trials"])}
        return grid.add(Cell.make("unlearn", original.key, {**params, "study": study["key"]}, trials))
    overrides = config.method_params.get(method, {})
    params["hparams"] = resolve_method(method).resolve_params(overrides, config.unlearn_epochs, base["dataset"])
    return grid.add(Cell.make("unlearn", original.key, params))


def _quantized_and_evaluated(grid, config, identity, source, deployed, original):
    """Yield (quant, evaluate key) for every mode of the `deployed` fp32 model (`source`, or it after a BatchNorm
    step). A quantized unlearnt or retrained model measures its weights' distance from the original against the
    mode's step (`evidence.mechanism`): the retrain's is the baseline of an update that truly removed the data."""
    reference = {"reference": original.key} if source is not original else {}
    for quant in quant_modes(config):
        model_cell, evaluate_inputs = deployed, {}
        if quant != "fp32":
            params = {**identity, "quant": quant, "calibration_size": config.calibration_size}
            model_cell = grid.add(Cell.make("quantize", deployed.key, params, reference))
            evaluate_inputs = {"source": deployed.key} if config.relearn else {}
        relearn = {"relearn": config.relearn_params.model_dump()} if config.relearn else {}
        bounded = {"retain_images": config.eval_retain_images} if config.eval_retain_images else {}
        params = {**identity, "quant": quant, **relearn, **bounded}
        yield quant, grid.add(Cell.make("evaluate", model_cell.key, params, evaluate_inputs)).key


def _add_comparisons(grid, config, model, dataset, evaluations: dict[tuple, str]) -> None:
    """One compare cell per (forget set, method, quant): every seed's model beside that seed's retrain model in
    the same quant mode."""
    groups = {group[:-1] for group in evaluations}
    for forget, method, unlearn_bn, step, quant in sorted(groups, key=str):
        inputs = {}
        seeds = [seed for seed in config.seeds if method in methods_on_seed(config, seed)]
        for seed in seeds:
            inputs[f"model:{seed}"] = evaluations[(forget, method, unlearn_bn, step, quant, seed)]
            inputs[f"retrain:{seed}"] = evaluations[(forget, "retrain", None, step, quant, seed)]
        treatment = _non_default(unlearn_bn=(unlearn_bn, ("train", None)), bn_reestimate=(step, ("none",)))
        holdout = {"holdout": config.holdout} if config.holdout else {}
        params = {"model": model, "dataset": dataset, "seeds": seeds, "method": method, "quant": quant,
                  "forget": forget.as_dict(), **treatment, **holdout}  # fmt: skip
        grid.add(Cell.make("compare", None, params, inputs))
