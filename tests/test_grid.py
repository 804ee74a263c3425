"""The grid DAG, config validation and bad input at the CLI boundary (no Ray needed)."""

import pytest

from cvmf_ray.config import load_config
from cvmf_ray.errors import UsageError
from cvmf_ray.grid import expand_grid


def test_default_grid_shares_prefixes():
    grid = expand_grid(load_config())
    counts = grid.to_json()["counts"]
    # 1 original + 1 retrain; 3 methods; 5 fp32 models x 3 other modes; 5 models x 4 modes evaluated
    assert counts == {"train": 2, "unlearn": 3, "quantize": 15, "evaluate": 20}
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


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"models": ["resnet9000"]}, "unknown model 'resnet9000'"),
        ({"datasets": ["imagenet"]}, "unknown dataset 'imagenet'"),
        ({"methods": ["forget_everything"]}, "forget_everything"),
        ({"quant": ["int3"]}, "unknown quant mode 'int3'"),
        ({"forget_classes": [10]}, "forget class 10 is out of range for 'digits'"),
        ({"forget_fractions": [1.5]}, "outside (0, 1)"),
        ({"epochs": 0}, "'epochs'"),
        ({"seeds": []}, "'seeds'"),
        ({"models": ["small_cnn", "small_cnn"]}, "lists the same entry twice"),
        ({"method_params": {"finetune": {"nope": 1}}}, "unknown parameter 'nope' for method 'finetune'"),
        ({"address": "127.0.0.1:1", "gpus": 1}, "--gpus/--cpus size a local Ray instance"),
    ],
)
def test_bad_config_values_are_one_clear_usage_error(overrides, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(**overrides)


def test_twenty_five_malformed_inputs_each_exit_2_with_one_line_naming_the_value(cli, tmp_path):
    def write(name: str, text: str):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    bad_yaml = write("bad.yaml", "models: [small_cnn\nepochs: 3\n")
    not_a_mapping = write("list.yaml", "- small_cnn\n")
    unknown_key = write("unknown.yaml", "modles: [small_cnn]\n")
    wrong_type = write("type.yaml", "epochs: many\n")
    a_file = write("a_file", "not a directory")
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
        (["grid", "--quant", "int3"], "unknown quant mode 'int3'"),
        (["list", "gizmos"], "'gizmos'"),
        # YAML
        (["grid", "--config", bad_yaml], "is not valid YAML at line"),
        (["grid", "--config", not_a_mapping], "must be a mapping"),
        (["grid", "--config", unknown_key], "'modles'"),
        (["grid", "--config", wrong_type], "'epochs'"),
        # types
        (["grid", "--epochs", "three"], "(got 'three')"),
        (["grid", "--seeds", "0,a"], "--seeds expects comma-separated ints, got '0,a'"),
        (["grid", "--forget-classes", "0,x"], "--forget-classes expects comma-separated ints"),
        (["grid", "--method-params", "finetune.lr=fast"], "finetune.lr"),
        (["grid", "--method-params", "finetune-lr=1"], "METHOD.NAME=VALUE, got 'finetune-lr=1'"),
        (["grid", "--method-params", "finetune.nope=1"], "unknown parameter 'nope' for method 'finetune'"),
        # ranges
        (["grid", "--forget-classes", "10"], "forget class 10 is out of range for 'digits'"),
        (["grid", "--forget-fractions", "0"], "forget fraction 0.0 is outside (0, 1)"),
        (["grid", "--unlearn-epochs", "0"], "'unlearn_epochs'"),
        (["grid", "--gpus-per-trial", "-1"], "'gpus_per_trial'"),
        (["grid", "--max-failures", "-5"], "'max_failures'"),
        (["grid", "--gpus", "64", *out_dir], "--gpus 64 asks for more GPUs than this machine has"),
        # paths and conflicting flags
        (["grid", "--results-dir", a_file], "is a file, not a directory"),
        (["grid", "--config", tmp_path / "missing.yaml"], "does not exist"),
        (["grid", "--results-dir", tmp_path / "runs", "--name", "done", "--no-resume"], "--no-resume"),
        (["grid", "--address", "127.0.0.1:1", "--gpus", "1"], "--gpus/--cpus size a local Ray instance"),
        (["status", tmp_path / "nothing"], "is not a cvmf-ray run directory"),
        (["results", existing], "has no results.parquet yet"),
    ]
    for args, message in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, out, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, (args, err)
    assert set(tmp_path.rglob("*")) == before  # no bad invocation wrote anything


def test_dry_run_prints_every_cell_and_runs_nothing(cli, tmp_path):
    code, out, _ = cli("grid", "--dry-run", "--results-dir", tmp_path, "--forget-classes", "0,1")
    assert code == 0
    assert "cells per stage: train 3, unlearn 6, quantize 30, evaluate 40" in out
    assert (
        len([line for line in out.splitlines() if line.startswith(("train", "unlearn", "quantize", "evaluate"))]) == 79
    )
    assert not any(tmp_path.iterdir())


def test_list_names_the_registries(cli):
    code, out, _ = cli("list", "methods")
    assert code == 0 and {"original", "retrain", "finetune"} <= set(out.split())
