"""The grid DAG, the recipes and method parameters each dataset resolves, config validation and bad input
at the CLI boundary (no Ray needed)."""

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cvmf_ray.config import TrainRecipe, load_config
from cvmf_ray.datasets import DATASETS
from cvmf_ray.errors import UsageError
from cvmf_ray.grid import expand_grid
from cvmf_ray.methods import LATER_FIELDS, METHODS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
UNLEARNING = [n for n in METHODS.names() if METHODS.get(n).fn is not None]
PUBLISHED_RECIPE = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": True,
                    "weight_decay": 5e-4, "schedule": "cosine", "grad_clip": None, "crop_padding": 4, "flip": True,
                    "bf16": False}  # fmt: skip


def test_default_grid_shares_prefixes():
    grid = expand_grid(load_config())
    counts = grid.to_json()["counts"]
    # 1 original + 1 retrain; 3 methods; 5 fp32 models x 3 other modes; 5 models x 4 modes evaluated
    assert counts == {"train": 2, "tune": 0, "unlearn": 3, "reestimate": 0, "quantize": 15, "evaluate": 20,
                      "compare": 20}  # fmt: skip
    original = next(c for c in grid.stage("train") if c.params["exclude"] is None)
    assert {c.parent for c in grid.stage("unlearn")} == {original.key}
    assert expand_grid(load_config()).cells.keys() == grid.cells.keys()  # keys are content hashes: stable


def test_more_forget_sets_reuse_the_original_and_change_every_key_below_it():
    grid = expand_grid(load_config(forget_classes=[0, 1], seeds=[0, 1], quant=["fp32"]))
    counts = grid.to_json()["counts"]
    assert counts["train"] == 2 * (1 + 2)  # per seed: one original + one retrain per forget class
    assert counts["unlearn"] == 2 * 2 * 3
    assert counts["evaluate"] == 2 * 2 * 5
    keys = [c.key for c in grid.cells.values()]
    assert len(keys) == len(set(keys))


def test_fp32_is_always_evaluated_as_the_recovery_reference():
    grid = expand_grid(load_config(quant=["fp16"], methods=["original"]))
    assert sorted(c.params["quant"] for c in grid.stage("evaluate")) == ["fp16", "fp32"]


# --- what each dataset resolves ----------------------------------------------------------------------------


def resolved(**options) -> tuple[dict, dict]:
    """(the recipe of the grid's original, {method: its resolved hyperparameters}) for one dataset."""
    grid = expand_grid(load_config(methods=["original", *UNLEARNING], quant=["fp32"], **options))
    (train,) = grid.stage("train")
    return train.params["recipe"], {c.params["method"]: c.params["hparams"] for c in grid.stage("unlearn")}


def published(method: str) -> dict:
    """The dataclass defaults, less the fields `resolve_params` leaves out at their defaults."""
    return {k: v for k, v in dataclasses.asdict(METHODS.get(method).params()).items() if k not in LATER_FIELDS}


def test_a_fashion_mnist_grid_resolves_the_published_recipe_and_method_values():
    recipe, hparams = resolved(datasets=["fashionmnist"], models=["resnet18"])
    assert recipe == {**PUBLISHED_RECIPE, "grad_clip": 0.5}  # Fashion-MNIST's model card clips at 0.5
    assert hparams == {method: published(method) for method in UNLEARNING}
    assert hparams["finetune"] == {"epochs": 5, "lr": 0.1, "batch_size": 128}  # not digits' batch 16
    cifar_recipe, _ = resolved(datasets=["cifar10"], models=["resnet18"])
    assert cifar_recipe == PUBLISHED_RECIPE


# What digits resolves (its own recipe, in bf16 autocast, and its own method values) beside the published defaults.
DIGITS_RECIPE = {**PUBLISHED_RECIPE, "epochs": 30, "batch_size": 64, "lr": 0.05, "crop_padding": 0, "flip": False,
                 "bf16": True}  # fmt: skip
DIGITS_METHODS = {
    "bad_teacher": {"epochs": 10, "lr": 1e-3, "batch_size": 256, "temperature": 1.0, "retain_fraction": 0.3},
    "boundary_expanding": {"epochs": 10, "lr": 1e-5, "batch_size": 32},
    "boundary_shrink": {"epochs": 10, "lr": 5e-4, "batch_size": 32, "bound": 0.3},
    "finetune": {"epochs": 5, "lr": 0.1, "batch_size": 16},
    "gradient_ascent": {"epochs": 5, "lr": 1e-3, "batch_size": 64, "clip": 100.0},
    "l1_sparse": {"epochs": 5, "lr": 0.1, "batch_size": 16, "alpha": 1e-4},
    "neggrad_plus": {"epochs": 3, "lr": 0.01, "batch_size": 64, "alpha": 0.95},
    "random_label": {"epochs": 3, "lr": 0.01, "batch_size": 64},
    "salun": {"epochs": 3, "lr": 0.01, "batch_size": 64, "mask_ratio": 0.5},
    "scrub": {"epochs": 5, "lr": 0.01, "batch_size": 128, "forget_batch_size": 128, "msteps": 1, "temperature": 2.0,
              "alpha": 0.5, "gamma": 1.0},  # fmt: skip
    "unsir": {"epochs": 1, "batch_size": 32, "impair_lr": 0.005, "repair_lr": 0.0025, "noise_batch": 32,
              "noise_copies": 20, "noise_steps": 40, "noise_lr": 0.1, "noise_l2": 0.1, "retain_per_class": 1000},
}  # fmt: skip


def test_digits_resolves_its_own_values_as_before():
    recipe, hparams = resolved()
    assert recipe == DIGITS_RECIPE
    assert {method: hparams[method] for method in DIGITS_METHODS} == DIGITS_METHODS  # the methods older studies ran
    assert load_config().recipe_for("digits").model_dump(exclude={"checkpoint_every", "compile"}) == DIGITS_RECIPE


def test_user_values_win_over_the_dataset_s_and_the_published(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("train: {lr: 0.2, flip: true}\nmethod_params: {finetune: {lr: 0.3}, salun: {epochs: 9}}\n")
    cli = {"epochs": 7, "unlearn_epochs": 2, "method_params": ["finetune.batch_size=8"]}
    for dataset, own_recipe, own_finetune in (
        ("digits", DIGITS_RECIPE, DIGITS_METHODS["finetune"]),
        ("fashionmnist", {**PUBLISHED_RECIPE, "grad_clip": 0.5}, published("finetune")),
    ):
        recipe, hparams = resolved(path=config, datasets=[dataset], **cli)
        # built-in < dataset < the file's train: fields < --epochs
        assert recipe == {**own_recipe, "lr": 0.2, "flip": True, "epochs": 7}
        # built-in < dataset < --unlearn-epochs < method_params (the file's, then the command line's)
        assert hparams["finetune"] == {**own_finetune, "epochs": 2, "lr": 0.3, "batch_size": 8}
        assert hparams["salun"]["epochs"] == 9


def test_every_dataset_s_own_values_are_valid():
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        TrainRecipe(**spec.train_recipe)
        for method, values in spec.method_defaults.items():
            assert METHODS.get(method).resolve_params({}, None, name) == {**published(method), **values}


def test_the_configs_only_say_what_differs_from_the_published_values():
    for file in ("cifar10-resnet18.yaml", "fashionmnist-resnet18.yaml"):
        config = load_config(CONFIGS / file)
        assert "train" not in config.model_fields_set and not config.method_params, file
        assert config.recipe_for(config.datasets[0]).epochs == 200 and config.forget_classes == "all"


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"models": ["resnet9000"]}, "unknown model 'resnet9000'"),
        ({"datasets": ["imagenet"]}, "unknown dataset 'imagenet'"),
        ({"methods": ["forget_everything"]}, "forget_everything"),
        ({"quant": ["int3"]}, "unknown quant mode 'int3'"),
        ({"forget_classes": [10]}, "forget class 10 is out of range for 'digits'"),
        ({"forget_fractions": [1.5]}, "invalid value 1.5 for --forget-fractions: Input should be less than 1"),
        ({"epochs": 0}, "invalid value 0 for --epochs"),
        ({"seeds": []}, "invalid value [] for --seeds: must name at least one entry"),
        ({"models": ["small_cnn", "small_cnn"]}, "'small_cnn' is listed twice"),
        ({"forget_classes": [1, 1]}, "invalid value [1, 1] for --forget-classes: 1 is listed twice"),
        ({"method_params": {"finetune": {"nope": 1}}}, "unknown parameter 'nope' for method 'finetune'"),
        (
            {"method_params": {"scrub": {"alpha": float("nan")}}},
            "bad value nan for scrub.alpha: Input should be a finite",
        ),
        ({"address": "127.0.0.1:1", "gpus": 1}, "--gpus/--cpus size a local Ray instance"),
    ],
)
def test_bad_config_values_are_one_clear_usage_error(overrides, message):
    with pytest.raises(UsageError) as err:
        load_config(**overrides)
    assert message in str(err.value)


PLUGIN_EXITS = "import sys\nsys.exit(0)\n\ndef fn(model, data, params):\n    return model\n"


def test_every_malformed_input_exits_2_with_one_line_naming_the_value(cli, tmp_path, monkeypatch):
    def write(name: str, text: str | bytes):
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return path

    bad_yaml = write("bad.yaml", "models: [small_cnn\nepochs: 3\n")
    not_a_mapping = write("list.yaml", "- small_cnn\n")
    unknown_key = write("unknown.yaml", "modles: [small_cnn]\n")
    wrong_type = write("type.yaml", "epochs: many\n")
    repeated = write("repeated.yaml", "epochs: 3\nseeds: [0]\nepochs: 4\n")
    repeated_inside = write("inside.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")
    binary = write("binary.yaml", bytes(range(256)))
    python_tag = write("tag.yaml", 'epochs: !!python/object/apply:os.system ["true"]\n')
    not_finite = write("nan.yaml", "train: {lr: .nan}\n")
    a_file = write("a_file", "not a directory")
    write("exits_on_import.py", PLUGIN_EXITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing the plug-in writes nothing either
    monkeypatch.setitem(  # a dataset with a class that has no training image
        DATASETS._entries, "digits_no_9", dataclasses.replace(DATASETS.get("digits"), name="digits_no_9",
                                                               class_counts=(150,) * 9 + (0,))
    )  # fmt: skip
    existing = tmp_path / "runs" / "done"
    existing.mkdir(parents=True)
    (existing / "grid.json").write_text("{}")
    before = set(tmp_path.rglob("*"))
    out_dir = ["--results-dir", tmp_path / "out"]
    cases = [  # names
        (["grid", "--models", "nope"], "unknown model 'nope'"),
        (["grid", "--datasets", "imagenet"], "unknown dataset 'imagenet'"),
        (["grid", "--methods", "forget_all"], "unknown method 'forget_all'"),
        (["grid", "--methods", "no_such_pkg.mod:fn"], "cannot import module 'no_such_pkg.mod'"),
        (["grid", "--methods", "exits_on_import:fn"], "'exits_on_import:fn': it calls sys.exit(0)"),
        (["grid", "--quant", "int3"], "unknown quant mode 'int3'"),
        (["list", "gizmos"], "'gizmos'"),
        # config files: not a YAML mapping, or a key given twice
        (["grid", "--config", bad_yaml], "is not valid YAML at line"),
        (["grid", "--config", not_a_mapping], "must be a mapping of option: value, not a list"),
        (["grid", "--config", unknown_key], f"unknown option 'modles' in config file '{unknown_key}'"),
        (["grid", "--config", wrong_type], f"invalid value 'many' for 'epochs' in config file '{wrong_type}'"),
        (["grid", "--config", repeated], f"'{repeated}' is not valid YAML at line 3: key 'epochs' is given twice"),
        (["grid", "--config", repeated_inside], "at line 3: key 'lr' is given twice"),
        (["grid", "--config", tmp_path], f"config file '{tmp_path}' is a directory, not a YAML file"),
        (["grid", "--config", binary], f"config file '{binary}' is not a text file"),
        (["grid", "--config", python_tag], "could not determine a constructor for the tag"),
        (["grid", "--config", tmp_path / "missing.yaml"], "does not exist"),
        # types
        (["grid", "--epochs", "three"], "(got 'three')"),
        (["grid", "--epochs", "3", "--epochs", "1e9"], "(got '1e9')"),  # the last one given counts: it failed
        (["grid", "--epochs=1e9", "--epochs", "3", "--epochs=x"], "(got 'x')"),
        (["grid", "--seeds", "0,a"], "invalid value 'a' for --seeds: Input should be a valid integer"),
        (["grid", "--forget-classes", "0,x"], "invalid value 'x' for --forget-classes"),
        (["grid", "--method-params", "finetune.lr=fast"], "bad value 'fast' for finetune.lr"),
        (["grid", "--method-params", "finetune-lr=1"], "METHOD.NAME=VALUE, got 'finetune-lr=1'"),
        (["grid", "--method-params", "finetune.nope=1"], "unknown parameter 'nope' for method 'finetune'"),
        (["grid", "--method-params", "finetune.lr=[1,"], "the VALUE of --method-params 'finetune.lr=[1,' is not valid"),
        (["grid", "--method-params", "finetune.lr=!!python/name:os.system"], "could not determine a constructor"),
        # ranges: integers numpy and torch accept, finite floats
        (["grid", "--seeds", "4294967296"], "for --seeds: Input should be less than or equal to 4294967295"),
        (["grid", "--epochs", "99999999999999999999"], "invalid value 99999999999999999999 for --epochs"),
        (["grid", "--method-params", "finetune.batch_size=99999999999999"], "99999999999999 for finetune.batch_size"),
        (["grid", "--method-params", "finetune.lr=.inf"], "inf for finetune.lr: Input should be a finite number"),
        (["grid", "--gpus-per-trial", "nan"], "nan for --gpus-per-trial: Input should be a finite number"),
        (["grid", "--config", not_finite], "invalid value nan for 'train.lr' in config file"),
        (["grid", "--forget-classes", "10"], "forget class 10 is out of range for 'digits'"),
        (["grid", "--forget-fractions", "0"], "'0' for --forget-fractions: Input should be greater than 0"),
        (["grid", "--unlearn-epochs", "0"], "invalid value 0 for --unlearn-epochs"),
        (["grid", "--gpus-per-trial", "-1"], "invalid value -1.0 for --gpus-per-trial"),
        (["grid", "--max-failures", "-5"], "invalid value -5 for --max-failures"),
        (["grid", "--gpus", "64", *out_dir], "--gpus 64 asks for more GPUs than this machine has"),
        # duplicates: one rule for every list
        (["grid", "--models", "small_cnn,small_cnn"], "for --models: 'small_cnn' is listed twice"),
        (["grid", "--forget-classes", "3,3"], "invalid value '3,3' for --forget-classes: 3 is listed twice"),
        (["grid", "--forget-fractions", "0.1,0.1"], "0.1 is listed twice"),
        (["grid", "--seeds", "1,1"], "1 is listed twice"),
        # degenerate forget sets
        (["grid", "--forget-fractions", "0.001"], "fraction 0.001 does not draw every class of 'digits' into both"),
        (["grid", "--forget-fractions", "0.999", "--seeds", "0,5"], "choose a smaller fraction"),
        (["grid", "--datasets", "digits_no_9", "--forget-classes", "9"], "class 9 has no training image in 'digits_no"),
        (["grid", "--forget-classes", ""], "no forget set: give --forget-classes or --forget-fractions"),
        # run names: one path component
        (["grid", "--name", "../escape", *out_dir], "'../escape' for --name: a run name is one folder name"),
        (["grid", "--name", "a/b", *out_dir], "invalid value 'a/b' for --name"),
        (["grid", "--name", "..", *out_dir], "invalid value '..' for --name"),
        (["grid", "--name", "", *out_dir], "invalid value '' for --name"),
        # ... that the filesystem takes: at most NAME_MAX bytes (UTF-8, not characters), no control character
        (["grid", "--name", "a" * 256, *out_dir], f"invalid value '{'a' * 256}' for --name: a run name is one"),
        (["grid", "--name", "é" * 128, *out_dir], "bytes in UTF-8"),  # 128 characters, 256 bytes
        (["grid", "--name", "two\nlines", *out_dir], "invalid value 'two\\nlines' for --name"),
        (["grid", "--name", "tab\there", *out_dir], "invalid value 'tab\\there' for --name"),
        (["grid", "--name", "del\x7f", *out_dir], "invalid value 'del\\x7f' for --name"),
        (["grid", "--name", "\udcff", *out_dir], "invalid value '\\udcff' for --name"),  # argv's undecodable byte
        # paths and conflicting flags
        (["grid", "--results-dir", a_file], "is a file, not a directory"),
        (["grid", "--results-dir", "/dev/null"], "'/dev/null' is a special file (a device, socket or pipe), not a"),
        (["grid", "--results-dir", tmp_path / "runs", "--name", "done", "--no-resume"], "--no-resume"),
        (["grid", "--address", "127.0.0.1:1", "--gpus", "1"], "--gpus/--cpus size a local Ray instance"),
        (["status", tmp_path / "nothing"], "is not a cvmf-ray run directory"),
        (["results", existing], "grid.json is damaged"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, out, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, (args, err)
        assert "internal error" not in err, (args, err)
    assert set(tmp_path.rglob("*")) == before  # no bad invocation wrote anything


@pytest.mark.parametrize(
    "entry, kind",
    [("grid.json", "file"), ("results.parquet", "file"), ("lock.json", "file"), ("artifacts", "directory"),
     ("evaluations", "directory"), ("failures", "directory"), ("checkpoints", "directory"), ("tune", "directory")],
)  # fmt: skip
def test_a_run_directory_entry_of_the_wrong_kind_is_refused_before_ray_starts(cli, tmp_path, monkeypatch, entry, kind):
    from cvmf_ray import driver

    monkeypatch.setattr(driver, "connect", lambda *args: pytest.fail("Ray was started"))
    wrong = tmp_path / "default" / entry
    wrong.parent.mkdir()
    wrong.mkdir() if kind == "file" else wrong.write_text("")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, out, err = cli("grid", "--results-dir", tmp_path, "--methods", "original", "--quant", "fp32", "--epochs", 1)
    assert code == 2, (out, err)
    other = "directory" if kind == "file" else "file"
    assert err == f"error: results location '{wrong.parent}' is unusable: '{wrong}' is a {other}, not a {kind}\n"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # no lock, no grid.json


def test_grid_help_documents_the_exit_codes(cli):
    code, out, _ = cli("grid", "--help")
    text = " ".join(out.split())
    assert code == 0 and "Exit codes: 0 every cell ok; 1 some cells failed" in text
    assert "2 bad input" in text and "130 / 143 interrupted by Ctrl-C / SIGTERM" in text


def test_dry_run_prints_every_cell_and_runs_nothing(cli, tmp_path):
    code, out, _ = cli("grid", "--dry-run", "--results-dir", tmp_path, "--forget-classes", "0,1")
    assert code == 0
    assert "cells per stage: train 3, unlearn 6, quantize 30, evaluate 40" in out
    assert (
        len([line for line in out.splitlines() if line.startswith(("train", "unlearn", "quantize", "evaluate"))]) == 79
    )
    assert not any(tmp_path.iterdir())


def test_the_driver_validates_and_expands_a_grid_of_every_entry_without_importing_torch():
    """The driver reads every registry (names, parameter dataclasses, dataset facts, weight bits) before Ray
    starts, without importing torch (cvmf_ray/lazy.py says why): torch is imported where tensors are made."""
    script = textwrap.dedent("""
        import sys
        from cvmf_ray import driver
        from cvmf_ray.cli import main
        from cvmf_ray.config import load_config
        from cvmf_ray.datasets import DATASETS
        from cvmf_ray.grid import expand_grid
        from cvmf_ray.methods import METHODS
        from cvmf_ray.models import MODELS
        from cvmf_ray.quant import QUANT_MODES
        from cvmf_ray.results import identity

        every = {"models": MODELS.names(), "methods": METHODS.names(), "quant": QUANT_MODES.names(),
                 "datasets": DATASETS.names()}
        grid = expand_grid(load_config(None, **{k: ",".join(v) for k, v in every.items()}))
        rows = [identity(cell) for cell in grid.stage("evaluate")]
        assert {row["weight_bits"] for row in rows} == {4, 8, 16, 32}
        print(len(grid.cells), sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cells, imported = run.stdout.split(" ", 1)
    assert int(cells) > 1000 and imported.strip() == "[]"


def test_list_names_the_registries(cli):
    code, out, _ = cli("list", "methods")
    assert code == 0 and {"original", "retrain", "finetune"} <= set(out.split())


def test_duplicate_keys_are_refused_but_yaml_merge_keys_still_work(tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(
        textwrap.dedent("""\
        method_params:
          finetune: &tuned {lr: 0.05, batch_size: 32}
          l1_sparse:
            <<: *tuned
            lr: 0.02
        """)
    )
    params = load_config(config).method_params
    assert params["l1_sparse"] == {"lr": 0.02, "batch_size": 32}  # a key overriding a merged one is no repeat
