"""Grid configuration: built-in defaults < YAML file < command line, parsed and validated once, here.

The command line hands its option strings over unparsed (`--seeds 0,1`, `--method-params salun.lr=0.1`)
and every value, from there or from a YAML file, is checked here before Ray starts or anything is
written; each mistake is one `UsageError` naming the value or the file: unknown keys and names, wrong
types, ranges (integers numpy and torch accept, finite floats), an entry listed twice in any list, forget
sets that select no training image, config files that are not a YAML mapping or repeat a key, run names
that are not one folder name the results filesystem takes.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from cvmf_ray.errors import UsageError
from cvmf_ray.values import MAX_COUNT, Count, Index, OpenFraction, Positive, Seed


class TrainRecipe(BaseModel):
    """How `original` and `retrain` models are trained. The built-in values are the published recipe of the
    Machine-Unlearning-Comparator's ResNet-18 model cards (CIFAR-10 95.4%, Fashion-MNIST 95.39% test
    accuracy): 200 epochs of SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, cosine-annealed, batch
    128, random crop (padding 4) and horizontal flip, in fp32 (its code has no autocast).

    A dataset changes what it must (`DatasetSpec.train_recipe`: `digits` has its own recipe, Fashion-MNIST
    clips gradients at 0.5 as published); a named preset (`recipe: cpu_study`, `PRESETS`) overrides both, the
    fields a YAML `train:` block sets override all three, and `--epochs` overrides the length (the schedule
    runs over whatever length is given).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: Count = 200  # full passes over the (retain) training set
    batch_size: Count = 128
    lr: Positive = 0.1  # peak learning rate, reached after `warmup`, then annealed by `schedule`
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    # cosine: annealed to 0 (the published); onecycle: down linearly to 0 (with `warmup`, airbench's triangle)
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup: float = Field(0.0, ge=0, lt=1)  # fraction of the steps over which lr first rises linearly from 0
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the cross-entropy targets (Szegedy et al. 2016)
    grad_clip: Positive | None = None  # max gradient norm; None disables clipping
    crop_padding: Index = 4  # RandomCrop(size, padding=crop_padding); 0 disables
    flip: bool = True  # RandomHorizontalFlip
    checkpoint_every: Count = 1  # epochs between resumable checkpoints
    compile: bool = False  # torch.compile the model (pays off on CUDA for runs of many epochs)
    bf16: bool = False  # bf16 autocast where computed natively (CUDA, AVX512-BF16/AMX CPUs); weights stay fp32

    @model_serializer(mode="wrap")
    def _later_fields_only_when_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves out `LATER_FIELDS` at their defaults: grid.py hashes this dump into every train cell's key, so a
        recipe that does not use a field added later keeps the key, and the trained models, it had before."""
        dumped = handler(self)
        return {k: v for k, v in dumped.items() if k not in LATER_FIELDS or v != type(self).model_fields[k].default}


LATER_FIELDS = ("warmup", "label_smoothing")  # added after cell keys existed (issue 21): hashed only when used


def cpu_study() -> dict[str, Any]:
    """`recipe: cpu_study`. NOT the published recipe: a short airbench-style schedule for strong originals in
    minutes on a 2-core CPU. Tuned on Fashion-MNIST with cnn5 (`scripts/bench_study_recipe.py`, BENCHMARKS.md):
    3 epochs reach 92% test accuracy in about 4 minutes of training on 2 threads, where the published recipe cut
    to 3 epochs reaches 84.7% (its cosine is still at its peak when cut). One-cycle: lr rises linearly over the
    first 15% of the steps and falls linearly to 0 by the last, so a short run ends annealed; label smoothing
    0.1 (Szegedy et al. 2016; airbench uses 0.2) for the few epochs; no random crop (the 28 px images are
    centred, and three epochs are too few to profit from it). Long runs keep the published recipe, the default.
    """
    return {
        "epochs": 3,
        "batch_size": 128,
        "lr": 0.1,
        "schedule": "onecycle",
        "warmup": 0.15,
        "label_smoothing": 0.1,
        "crop_padding": 0,
        "grad_clip": None,
        "bf16": True,
    }


# named recipes a grid asks for in one word (`recipe: NAME`), between a dataset's own changes and `train:`
PRESETS: dict[str, dict[str, Any]] = {"published": {}, "cpu_study": cpu_study()}


class RelearnParams(BaseModel):
    """How relearning is run; a pydantic model so a config section can embed and validate it.

    Defaults, chosen on digits/small_cnn (forget class 0: 133 training images) and bounded on Fashion-MNIST
    (`scripts/bench_evidence.py` measures both):
    - 32 forget images, fixed by `seed`, one full-batch step each time (deterministic: no batch order):
      few enough to be a realistic relearning attack, enough for a gradient that is not one image's.
    - plain SGD, lr 0.001, momentum 0.9: a tenth of the unlearning methods' own fine-tuning rate. At 0.01
      every unlearnt model on digits relearns in one step and only retrain takes longer; at 0.001 they
      spread out (1 to ~10 steps) below retrain's ~30, so the count can rank methods.
    - threshold 0.5 on held-out forget accuracy: the class is predicted for most of its images again,
      far above the 0.1 chance of 10 classes and far above a retrained model's ~0.
    - accuracy checked after every step (exact counts) on at most 128 held-out images (a resolution of
      <1%; a check, forward only, costs about one step); at most 100 steps.
    - BatchNorm in eval mode: its running statistics stay the model's own. Training-mode BatchNorm on a
      batch of one class would normalise with that class's statistics, changing the model's function
      on the check itself, and the count would measure statistics adapting, not knowledge returning.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    subset_size: int = Field(32, ge=1)  # forget images fine-tuned on
    eval_size: int = Field(128, ge=1)  # held-out forget images the accuracy is checked on (at most)
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    threshold: float = Field(0.5, gt=0, le=1)  # held-out forget accuracy that counts as relearnt
    max_steps: int = Field(100, ge=1)  # null steps when the threshold is not reached by then
    check_every: int = Field(1, ge=1)  # steps between accuracy checks
    seed: int = 0


LISTS = ("models", "datasets", "methods", "quant", "forget_classes", "forget_fractions", "seeds", "bn_reestimate",
         "unlearn_bn")  # fmt: skip
# Where a deployment step that re-estimates BatchNorm statistics takes its images: `train` the whole training set
# (forgotten data included), `retain` the training set after deletion, `test` held-out images of the retained
# classes; `none`, no such step (cvmf_ray/stages/reestimate.py)
BN_SOURCES = ("none", "train", "retain", "test")
# How BatchNorm runs while a method unlearns: `train` as the method's own code has it (batch statistics, running
# statistics updated), `frozen` in eval mode (running statistics untouched, affine parameters still trained)
UNLEARN_BN = ("train", "frozen")


def comma_list(value: Any) -> Any:
    """'a, b' -> ['a', 'b'] (the command line's form, accepted in YAML too); a lone number -> [number]."""
    if isinstance(value, str):
        return value.strip() if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return value


def each_once(value: Any) -> Any:
    """One rule for every list: an entry given twice is a mistake (a grid would compute it once)."""
    if isinstance(value, list):
        twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
        if twice is not None:
            raise ValueError(f"{twice!r} is listed twice")
    return value


TUNED = "@tuned"  # a tuned method's name in the results: `gradient_ascent@tuned` beside `gradient_ascent`


class TuneSettings(BaseModel):
    """`tune:` (the command line's --tune, --tune-trials, --tune-seeds): methods tuned against the retrained model.

    One study per (model, dataset, forget set, method) runs `trials` trials on the tuning `seeds` (default: the
    grid's first), scored on a stratified validation split of the training set (`validation_fraction` of each class,
    drawn with `validation_seed`) that every original and retrain of the grid trains without; each split a trial
    is scored on is capped at `samples` images. The chosen values then run, as METHOD@tuned, on the grid's other
    seeds. `spaces` overrides a method's search space per parameter (cvmf_ray/search_space.py).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    methods: list[str] | Literal["all"] = []
    trials: Count = 20
    seeds: list[Seed] | None = None
    validation_fraction: OpenFraction = 0.1
    validation_seed: Seed = 0
    samples: Count = 1024
    spaces: dict[str, dict[str, Any]] = {}

    _split_commas = field_validator("methods", "seeds", mode="before")(comma_list)
    _each_once = field_validator("methods", "seeds")(each_once)


class GridConfig(BaseModel):
    """Everything `cvmf-ray grid` needs: what to compute (lists), how to train, where and how to run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # what to compute: the lists whose product is the grid (a string is a comma-separated list)
    models: list[str] = ["small_cnn"]
    datasets: list[str] = ["digits"]
    methods: list[str] = ["original", "retrain", "finetune", "gradient_ascent", "random_label"]
    quant: list[str] = ["fp32", "fp16", "bf16", "int8"]
    forget_classes: list[Index] | Literal["all"] = [0]
    forget_fractions: list[OpenFraction] = []
    seeds: list[Seed] = [0]
    bn_reestimate: list[Literal[BN_SOURCES]] = ["none"]  # deployment steps before each quant mode (BN_SOURCES)
    unlearn_bn: list[Literal[UNLEARN_BN]] = ["train"]  # the BN control of methods that train BatchNorm
    # how
    train: TrainRecipe = TrainRecipe()
    # a named recipe under `train:` (PRESETS): `published`, the built-in one; `cpu_study`, NOT the published recipe
    # but a short one for strong originals on a 2-core CPU (its docstring says what it was tuned for)
    recipe: Literal[tuple(PRESETS)] = "published"
    epochs: Count | None = None  # shortcut that overrides every dataset's training length
    unlearn_epochs: Count | None = None  # overrides every method's own default
    method_params: dict[str, dict[str, Any]] = {}  # e.g. {"finetune": {"lr": 0.01}}
    calibration_size: Count = 512  # retain-train images used to calibrate quantization
    # retain-train images each evaluation infers, a seeded sample per seed (default: all); forget and test sets whole
    eval_retain_images: Count | None = None
    # BatchNorm re-estimation: AIMET's `reestimate_bn_stats` default of 100 batches, cumulative average (Nagel et
    # al. 2022); batches of the dataset's training batch size unless given (a deployer's training loader)
    bn_reestimate_batches: Count = 100
    bn_reestimate_batch_size: Count | None = None
    tune: TuneSettings = TuneSettings()  # methods tuned against retrain (TuneSettings says how)
    relearn: bool = False  # measure every evaluated model's relearn time (its evaluate cell fine-tunes a copy)
    relearn_params: RelearnParams = RelearnParams()  # how (its docstring says why each default)
    data_root: str = Field("~/.cache/cvmf-ray/data", validate_default=True)  # made absolute (trials run elsewhere)
    # where and on what
    results_dir: str = "results"
    name: str = "default"
    gpus: Index | None = None
    cpus: Count | None = None
    gpus_per_trial: float | None = Field(None, ge=0)
    address: str | None = None
    max_failures: int = Field(1, ge=-1, le=MAX_COUNT)
    dashboard: bool = False

    _split_commas = field_validator(*LISTS, mode="before")(comma_list)
    _each_once = field_validator(*LISTS)(each_once)

    @field_validator("models", "datasets", "methods", "quant", "seeds", "bn_reestimate", "unlearn_bn")
    @classmethod
    def _not_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must name at least one entry")
        return value

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """Trials run in Ray's per-trial working directories: a relative root is resolved here, once."""
        if not value.strip():
            raise ValueError("a data root must not be empty")
        return os.path.abspath(os.path.expanduser(value))

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, value: str, info: ValidationInfo) -> str:
        """RESULTS_DIR/NAME is one folder the filesystem there can make, checked before anything is written:
        a name too long fails only when the run directory is made (ENAMETOOLONG), one with a control character
        (a newline) makes a folder no listing shows as typed, and an undecodable byte (a lone surrogate from
        the command line) cannot be a path for pyarrow, which takes UTF-8."""
        limit = name_max(info.data.get("results_dir", ""))
        if (
            value in ("", ".", "..")
            or any(c in "/\\" or unicodedata.category(c) in ("Cc", "Cs") for c in value)
            or len(value.encode()) > limit
        ):
            raise ValueError(
                "a run name is one folder name: not empty, '.' or '..', no '/', '\\', control character or undecodable "
                f"byte, at most {limit} bytes in UTF-8"
            )
        return value

    @model_validator(mode="after")
    def _some_forget_set(self) -> GridConfig:
        if self.forget_classes == [] and not self.forget_fractions:
            raise ValueError("no forget set: give --forget-classes or --forget-fractions")
        return self

    @property
    def tuned(self) -> list[str]:
        """The methods tuned, `all` resolved to every unlearning method of `methods`."""
        if self.tune.methods == "all":
            return [m for m in self.methods if m not in ("original", "retrain")]
        return list(self.tune.methods)

    @property
    def tuning_seeds(self) -> list[int]:
        return list(self.tune.seeds) if self.tune.seeds is not None else self.seeds[:1]

    @property
    def holdout(self) -> dict | None:
        """The validation split every cell of a tuning grid leaves out of its training set; None without tuning."""
        if not self.tuned:
            return None
        return {"fraction": self.tune.validation_fraction, "seed": self.tune.validation_seed}

    def recipe_for(self, dataset: str) -> TrainRecipe:
        """The recipe `dataset` trains with: built-in (published) < the dataset's own < the `recipe:` preset <
        `train:` fields < --epochs. A `train:` field given at its default value still wins over the preset's."""
        from cvmf_ray.datasets import DATASETS

        given = {name: getattr(self.train, name) for name in self.train.model_fields_set}
        values = {**DATASETS.get(dataset).train_recipe, **PRESETS[self.recipe], **given}
        if self.epochs is not None:
            values["epochs"] = self.epochs
        return TrainRecipe(**values)


NAME_MAX = 255  # bytes in a file name on ext4, xfs, btrfs, ZFS and APFS: the limit where pathconf cannot tell


def name_max(results_dir: str) -> int:
    """The longest folder name (in bytes) the filesystem of a local results folder takes, asked of its nearest
    existing ancestor (the folder itself may not exist yet); NAME_MAX for an object store, or where unknown."""
    if "://" in results_dir and not results_dir.startswith("file:///"):
        return NAME_MAX
    path = os.path.abspath(os.path.expanduser(results_dir.removeprefix("file://")))
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def load_config(path: str | Path | None = None, **options: Any) -> GridConfig:
    """Defaults < YAML at `path` < `options` (the command line's; None = not given), validated as one object.

    Lists may be comma-separated strings; `method_params` may be METHOD.NAME=VALUE strings (`--method-params`)
    or a mapping, merged per method over the file's; `compile` sets `train.compile`.
    """
    values = {} if path is None else _read_yaml(Path(path))
    given = {k: v for k, v in options.items() if v is not None}
    if "compile" in given and isinstance(values.get("train", {}), dict):
        values["train"] = {**values.get("train", {}), "compile": given.pop("compile")}
    if "method_params" in given:
        given["method_params"] = _merged_method_params(values.get("method_params"), given["method_params"])
    tune_given = {TUNE_OPTIONS[name]: given.pop(name) for name in list(given) if name in TUNE_OPTIONS}
    if tune_given and isinstance(values.get("tune", {}), dict):  # otherwise the file's `tune:` is refused below
        values["tune"] = {**values.get("tune", {}), **tune_given}
    values.update(given)
    try:
        config = GridConfig.model_validate(values)
    except ValidationError as err:
        tune_options = {option for option, name in TUNE_OPTIONS.items() if name in tune_given}
        raise _usage_error(err.errors()[0], {*given, *tune_options}, path) from None
    _check(config)
    return config


TUNE_OPTIONS = {"tune_methods": "methods", "tune_trials": "trials", "tune_seeds": "seeds"}  # --tune-trials -> tune


def _usage_error(error: dict, command_line: set[str], path: str | Path | None) -> UsageError:
    """pydantic's error as one line naming the option (`--seeds`) or the file's key, and the value."""
    loc = [p for p in error["loc"] if isinstance(p, int) or p.isidentifier()]  # without union-member tags
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check of the whole config
        return UsageError(message)
    key = str(loc[0])
    dotted = ".".join(str(p) for p in loc if not isinstance(p, int))
    in_file = f" in config file {str(path)!r}" if path is not None else ""
    if error["type"] in ("extra_forbidden", "invalid_key"):
        return UsageError(f"unknown option {dotted!r}{in_file}")
    option = key
    if key == "tune" and len(loc) > 1:  # --tune, --tune-trials, --tune-seeds fill the `tune:` section
        option = next((o for o, name in TUNE_OPTIONS.items() if name == loc[1]), key)
    from_command_line = option in command_line and (option != key or dotted == key)
    flag = "--tune" if option == "tune_methods" else "--" + option.replace("_", "-")
    where = flag if from_command_line else f"{dotted!r}{in_file}"
    return UsageError(f"invalid value {error['input']!r} for {where}: {message}")


def _merged_method_params(in_file: Any, given: list[str] | dict) -> Any:
    """The command line's per-method parameters over the file's, method by method."""
    if isinstance(given, list):
        given = _parse_method_params(given)
    if not isinstance(in_file, dict):
        return given
    merged = dict(in_file)
    for method, params in given.items():
        old = merged.get(method)
        merged[method] = {**old, **params} if isinstance(old, dict) and isinstance(params, dict) else params
    return merged


def _parse_method_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """['salun.mask_ratio=0.5'] -> {'salun': {'mask_ratio': 0.5}}; each VALUE is YAML (0.5, true, [1, 2])."""
    parsed: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        method, dot, param = name.rpartition(".")
        if not (sep and dot and method and param):
            raise UsageError(f"--method-params expects METHOD.NAME=VALUE, got {item!r}")
        parsed.setdefault(method, {})[param] = _parse_yaml(raw, f"the VALUE of --method-params {item!r}")
    return parsed


# ---------------------------------------------------------------- YAML


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, key: Hashable, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} is given twice", mark)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML silently keeps the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: a key given here overrides the merged one, no repeat
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it, with its own message
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
        raise UsageError(f"{where} is not valid YAML{line}: {problem.splitlines()[0]}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"config file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not a text file (not UTF-8): a YAML file is expected") from None
    except OSError as err:
        raise UsageError(f"cannot read {where}: {err.strerror or err}") from None
    values = _parse_yaml(text, where)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping of option: value, not a {type(values).__name__}")
    return values


# ---------------------------------------------------------------- checks across values


def _check(config: GridConfig) -> None:
    """What single fields cannot say: names exist, parameters fit their method, methods fit the models, forget
    sets select images."""
    from cvmf_ray.datasets import DATASETS
    from cvmf_ray.methods import resolve_method
    from cvmf_ray.models import MODELS
    from cvmf_ray.quant import QUANT_MODES

    for name in config.models:
        MODELS.get(name)
    for name in config.quant:
        QUANT_MODES.get(name)
    specs = [DATASETS.get(name) for name in config.datasets]
    # method_params may name methods not in this run's list: a config serves many runs
    for name in dict.fromkeys([*config.methods, *config.method_params]):
        method = resolve_method(name)
        for spec in specs:
            method.resolve_params(config.method_params.get(name, {}), config.unlearn_epochs, spec.name)
    _check_last_blocks(config)
    if config.tune.methods or config.tune.model_fields_set - {"methods"}:
        _check_tuning(config, specs)
    for spec in specs:
        _check_forget_sets(config, spec)
    if "frozen" in config.unlearn_bn:
        _check_bn_control(config)
    if config.address and (config.gpus is not None or config.cpus is not None):
        raise UsageError("--gpus/--cpus size a local Ray instance; with --address the cluster's resources are used")
    if not config.address:
        _check_local_resources(config)


def _check_tuning(config: GridConfig, specs) -> None:
    """Tuned methods exist and unlearn something, retrain is there to score against, the tuning seeds are the
    grid's and leave one to evaluate on, and every search space parses."""
    from cvmf_ray.methods import resolve_method
    from cvmf_ray.search_space import method_space

    if not config.tune.methods:
        given = sorted(config.tune.model_fields_set - {"methods"})[0]
        flag = {"trials": "--tune-trials ", "seeds": "--tune-seeds "}.get(given, "")
        raise UsageError(f"{flag}(tune.{given}) is given but no method is tuned: add --tune METHODS (YAML "
                         "tune.methods)")  # fmt: skip
    if config.tune.methods == "all" and not config.tuned:
        raise UsageError("--tune all: --methods has no unlearning method to tune (only original and retrain)")
    for name in config.tuned:
        if name in ("original", "retrain"):
            raise UsageError(f"--tune {name}: only unlearning methods are tuned (original and retrain have no values)")
        resolve_method(name)
    if "retrain" not in config.methods:
        raise UsageError("--tune needs retrain in --methods: every trial is scored against the retrained model")
    outside = [seed for seed in config.tuning_seeds if seed not in config.seeds]
    if outside:
        raise UsageError(f"--tune-seeds {outside[0]} is not a seed of the grid (--seeds {config.seeds})")
    if set(config.seeds) <= set(config.tuning_seeds):
        which = "--tune-seeds" if config.tune.seeds is not None else "the tuning seed (the first of --seeds)"
        raise UsageError(f"{which} {config.tuning_seeds} leaves no seed of --seeds {config.seeds} to evaluate the "
                         "tuned values on: add a seed to --seeds")  # fmt: skip
    for name in dict.fromkeys([*config.tuned, *config.tune.spaces]):
        for spec in specs:
            method_space(resolve_method(name), config.recipe_for(spec.name).epochs, config.tune.spaces.get(name))


def _check_last_blocks(config: GridConfig) -> None:
    """CF-k and EU-k train the model's last block: each model of the grid declares one (a plug-in cannot)."""
    from cvmf_ray.methods import resolve_method
    from cvmf_ray.models import model_info

    needing = [name for name in [*config.methods, *config.tuned] if resolve_method(name).needs_last_block]
    bare = [model for model in config.models if not model_info(model).last_block]
    if needing and bare:
        raise UsageError(f"method {needing[0]!r} needs the model's last block; model {bare[0]!r} declares none")


def _check_bn_control(config: GridConfig) -> None:
    """`--unlearn-bn frozen` needs a method that trains BatchNorm and a model that has it (or may: a plug-in)."""
    from cvmf_ray.methods import resolve_method
    from cvmf_ray.models import model_info

    unlearning = [m for m in dict.fromkeys([*config.methods, *config.tuned]) if m not in ("original", "retrain")]
    if not any(resolve_method(m).trains_bn for m in unlearning):
        raise UsageError(
            f"--unlearn-bn frozen: no method of {', '.join(unlearning) or 'this grid'} trains BatchNorm (original "
            "and retrain unlearn nothing; weight-only methods run in eval mode already)"
        )
    if not any(model_info(model).batchnorm for model in config.models):
        raise UsageError(f"--unlearn-bn frozen: no model of {', '.join(config.models)} has BatchNorm")


def _check_local_resources(config: GridConfig) -> None:
    """A local Ray instance cannot have more GPUs or CPUs than this machine (each CPU is a trial process)."""
    if config.gpus:
        import torch  # the count torch sees: what trials compute on

        have = torch.cuda.device_count()
        if config.gpus > have:
            raise UsageError(f"--gpus {config.gpus} asks for more GPUs than this machine has ({have})")
    if config.cpus and config.cpus > (os.cpu_count() or 1):
        raise UsageError(f"--cpus {config.cpus} asks for more CPUs than this machine has ({os.cpu_count()})")


def _check_forget_sets(config: GridConfig, spec) -> None:
    """Every forget class has training images; every fraction draws at least one image of every class into
    both the forget and the retain set, for every seed (the stratified draw the unlearn stage makes)."""
    classes = range(spec.num_classes) if config.forget_classes == "all" else config.forget_classes
    for c in classes:
        if c >= spec.num_classes:
            raise UsageError(f"forget class {c} is out of range for {spec.name!r} (classes 0..{spec.num_classes - 1})")
        if spec.class_counts[c] == 0:
            raise UsageError(f"forget class {c} has no training image in {spec.name!r}: there is nothing to forget")
    if config.forget_fractions:
        import torch

        labels = torch.repeat_interleave(torch.arange(spec.num_classes), torch.tensor(spec.class_counts))
        for fraction in config.forget_fractions:
            for seed in config.seeds:
                _check_fraction(spec, labels, fraction, seed)


def _check_fraction(spec, labels, fraction: float, seed: int) -> None:
    """The unlearn stage's own draw (`forget_mask`), on labels with the dataset's class sizes: sklearn's
    stratified split depends only on those and the seed, so it selects the same number of images per class."""
    import torch

    from cvmf_ray.errors import CellError
    from cvmf_ray.forget import ForgetSpec, forget_mask

    counts = torch.bincount(labels, minlength=spec.num_classes)
    try:
        forget = torch.bincount(
            labels[forget_mask(ForgetSpec("fraction", fraction), labels, seed)], minlength=spec.num_classes
        )
    except CellError:  # fewer images on one side than classes: no stratified draw exists at all
        forget = torch.zeros_like(counts)
    if ((forget == 0) | (forget == counts))[counts > 0].any():
        instead = "larger" if fraction <= 0.5 else "smaller"
        raise UsageError(
            f"forget fraction {fraction} does not draw every class of {spec.name!r} into both the forget and the "
            f"retain set ({spec.train_size} training images, {spec.num_classes} classes, seed {seed}): "
            f"choose a {instead} fraction"
        )
