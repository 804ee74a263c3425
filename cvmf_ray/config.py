"""Grid configuration: built-in defaults < YAML file < command line, validated once at the boundary.

Every mistake a user can make in a config (unknown key, wrong type, unknown name, class out of range)
becomes one `UsageError` naming the bad value, before Ray starts or anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cvmf_ray.errors import UsageError


class TrainRecipe(BaseModel):
    """How `original` and `retrain` models are trained (SGD + cosine annealing, the published recipes)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)  # full passes over the (retain) training set
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)  # peak learning rate, cosine-annealed to 0 over the run
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm; None disables clipping
    crop_padding: int = Field(0, ge=0)  # RandomCrop(size, padding=crop_padding); 0 disables
    flip: bool = False  # RandomHorizontalFlip (off for digits: a mirrored 2 is no 2)
    checkpoint_every: int = Field(1, ge=1)  # epochs between resumable checkpoints
    compile: bool = False  # torch.compile the model (pays off on CUDA for runs of many epochs)
    bf16: bool = True  # bf16 autocast where computed natively (CUDA, AVX512-BF16/AMX CPUs); weights stay fp32


class GridConfig(BaseModel):
    """Everything `cvmf-ray grid` needs: what to compute (lists), how to train, where and how to run."""

    model_config = ConfigDict(extra="forbid")

    # what to compute: the lists whose product is the grid
    models: list[str] = ["small_cnn"]
    datasets: list[str] = ["digits"]
    methods: list[str] = ["original", "retrain", "finetune", "gradient_ascent", "random_label"]
    quant: list[str] = ["fp32", "fp16", "bf16", "int8"]
    forget_classes: list[int] | Literal["all"] = [0]
    forget_fractions: list[float] = []
    seeds: list[int] = [0]
    # how
    train: TrainRecipe = TrainRecipe()
    epochs: int | None = Field(None, ge=1)  # shortcut that overrides train.epochs
    unlearn_epochs: int | None = Field(None, ge=1)  # overrides every method's own default
    method_params: dict[str, dict[str, Any]] = {}  # e.g. {"finetune": {"lr": 0.01}}
    calibration_size: int = Field(512, ge=1)  # retain-train images used to calibrate quantization
    relearn: bool = False  # measure relearn time of every evaluated model (evaluate cells fine-tune a copy)
    relearn_params: dict[str, Any] = {}  # overrides of the relearn defaults (cvmf_ray/evidence)
    data_root: str = "~/.cache/cvmf-ray/data"
    # where and on what
    results_dir: str = "results"
    name: str = "default"
    gpus: int | None = Field(None, ge=0)
    cpus: int | None = Field(None, ge=1)
    gpus_per_trial: float | None = Field(None, ge=0)
    address: str | None = None
    max_failures: int = Field(1, ge=-1)
    dashboard: bool = False

    @field_validator("models", "datasets", "methods", "quant", "seeds")
    @classmethod
    def _not_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must name at least one entry")
        return value

    @field_validator("forget_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0 < fraction < 1:
                raise ValueError(f"forget fraction {fraction} is outside (0, 1)")
        return value

    @property
    def recipe(self) -> TrainRecipe:
        if self.epochs is None:
            return self.train
        return self.train.model_copy(update={"epochs": self.epochs})


def load_config(path: str | Path | None = None, **overrides: Any) -> GridConfig:
    """Defaults < YAML at `path` < `overrides` (None values are ignored), validated as one object."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = GridConfig(**values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UsageError(f"invalid config value for {where!r}: {first['msg']}") from None
    _check_names(config)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"config file {str(path)!r} must be a mapping of option: value")
    return values


def _check_names(config: GridConfig) -> None:
    from cvmf_ray.datasets import DATASETS
    from cvmf_ray.methods import resolve_method
    from cvmf_ray.models import MODELS
    from cvmf_ray.quant import QUANT_MODES

    for name in config.models:
        MODELS.get(name)
    for name in config.quant:
        QUANT_MODES.get(name)
    for name in config.methods:
        resolve_method(name)
    for name in config.method_params:  # may name methods not in this run's list: a config serves many runs
        resolve_method(name).resolve_params(config.method_params[name], None)
    for name in config.datasets:
        spec = DATASETS.get(name)
        if config.forget_classes != "all":
            for c in config.forget_classes:
                if not 0 <= c < spec.num_classes:
                    raise UsageError(
                        f"forget class {c} is out of range for {name!r} (classes 0..{spec.num_classes - 1})"
                    )
    if config.address and (config.gpus is not None or config.cpus is not None):
        raise UsageError("--gpus/--cpus size a local Ray instance; with --address the cluster's resources are used")
    for duplicated in ("models", "datasets", "methods", "quant", "seeds"):
        values = getattr(config, duplicated)
        if len(set(values)) != len(values):
            raise UsageError(f"{duplicated} lists the same entry twice: {values}")
