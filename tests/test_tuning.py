"""Tuning methods against retrain inside the one streaming DAG (issue 22): a study's trials, its choice flowing
into METHOD@tuned rows, tuning.parquet, a kill mid-study and the resume, and the bad values refused up front."""

import dataclasses
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from cvmf_ray.cells import CellSettings, execute_cell
from cvmf_ray.config import load_config
from cvmf_ray.grid import Cell, expand_grid
from cvmf_ray.objective import WORST, best_trial, score
from cvmf_ray.results import rows_from_table, tuning_row, tuning_table
from cvmf_ray.stages.tune import Holdout, holdout
from tests.conftest import kill_session, metas, start_driver, wait_for

TUNED_GRID = ["--methods", "original,retrain,finetune", "--tune", "finetune", "--tune-trials", "8", "--seeds", "0,1",
              "--quant", "fp32,int8", "--epochs", "6"]  # fmt: skip


def test_a_study_killed_mid_search_resumes_where_it_stopped_and_its_choice_runs_as_method_at_tuned(cli, tmp_path):
    """SIGKILL the whole session once two trials have finished: a rerun keeps them (never reruns one), tells them to
    the study's searcher, runs the rest; the best trial's values run on the seed not tuned on, beside the method
    at its published values."""
    run = tmp_path / "default"
    grid = expand_grid(load_config(results_dir=str(tmp_path), **_options(TUNED_GRID)))
    trial_keys = {cell.key for cell in grid.stage("tune")}
    assert len(trial_keys) == 8
    driver = start_driver("grid", *TUNED_GRID, "--results-dir", tmp_path, log=tmp_path / "driver.log")
    try:
        wait_for(lambda: len(trial_keys & metas(run).keys()) >= 2, driver, "two finished trials", timeout=600)
    finally:
        kill_session(driver)
    before = {key: meta for key, meta in metas(run).items() if key in trial_keys}
    assert 2 <= len(before) < 8, "the kill came after the whole study: nothing left to resume"

    code, out, err = cli("grid", *TUNED_GRID, "--results-dir", tmp_path)
    assert code == 0, out + err
    after = {key: meta for key, meta in metas(run).items() if key in trial_keys}
    assert after.keys() == trial_keys
    for key, meta in before.items():  # finished trials were not rerun: same values, same run interval
        assert after[key]["interval"] == meta["interval"] and after[key]["metrics"] == meta["metrics"]

    trials = pq.read_table(run / "tuning.parquet").to_pylist()
    assert sorted(t["trial"] for t in trials) == list(range(8)) and {t["status"] for t in trials} == {"ok"}
    assert len({t["hparams"] for t in trials}) == 8  # the searcher did not suggest a finished trial's values again
    for t in trials:
        assert json.loads(t["hparams"]) == after[t["key"]]["metrics"]["hparams"]
        components = [t[name] for name in ("retain_gap", "forget_gap", "validation_gap", "mia_gap")]
        assert all(0 <= c <= 1 for c in components) and t["objective"] == pytest.approx(
            math.hypot(*(w * c for w, c in zip((1 / 3, 1 / 3, 1 / 3, 1), components, strict=True)))
        )
        assert t["seeds"] == "0" and t["eval_seconds"] > 0 and t["unlearn_seconds"] > 0
        assert json.loads(t["published"])["lr"] == 0.1  # finetune's digits value, what the published rows run
    best = [t for t in trials if t["best"]]
    assert len(best) == 1 and best[0]["objective"] == min(t["objective"] for t in trials)
    searched = set(json.loads(best[0]["hparams"])) & {"lr", "weight_decay", "epochs", "batch_size"}
    assert len(searched) == 4

    rows = pq.read_table(run / "results.parquet").to_pylist()
    tuned = [r for r in rows if r["method"] == "finetune@tuned"]
    assert {(r["seed"], r["quant"]) for r in tuned} == {(1, "fp32"), (1, "int8")}  # not on the tuning seed
    for r in tuned:
        assert r["status"] == "ok" and r["tuned"] is True
        params = json.loads(r["method_params"])
        assert params["study"] == best[0]["study"] and params["trial"] == best[0]["trial"]
        assert {k: params[k] for k in json.loads(best[0]["hparams"])} == json.loads(best[0]["hparams"])
        assert r["gap_to_retrain"] is not None and r["compare_key"] is not None
    published = [r for r in rows if r["method"] == "finetune"]
    assert {r["seed"] for r in published} == {0, 1} and not any(r["tuned"] for r in published)
    assert all(json.loads(r["method_params"])["lr"] == 0.1 for r in published)

    code, out, err = cli("grid", *TUNED_GRID, "--results-dir", tmp_path, "--tune-trials", "9")
    assert code == 0, out + err  # one more trial: the eight are kept, one runs, the choice may move
    assert {k: m["interval"] for k, m in metas(run).items() if k in trial_keys} == {
        k: m["interval"] for k, m in after.items()
    }
    assert len(pq.read_table(run / "tuning.parquet")) == 9


def _options(args: list[str]) -> dict:
    names = {"--methods": "methods", "--tune": "tune_methods", "--tune-trials": "tune_trials", "--seeds": "seeds",
             "--quant": "quant", "--epochs": "epochs"}  # fmt: skip
    return {names[flag]: value for flag, value in zip(args[::2], args[1::2], strict=True)}


def test_a_trial_reads_no_test_image_and_the_originals_train_without_the_validation_split(digits, tmp_path):
    """The validation split is stratified and left out of every cell's training set; a trial's score does not
    change when every test image is replaced (it never reads them); a diverging trial and a failed one score the
    worst, and the study's choice is among the others."""
    kept, (val_x, val_y) = holdout(digits, Holdout(0.1, 0))
    assert len(kept.train_y) + len(val_y) == len(digits.train_y)
    counts, val_counts = torch.bincount(digits.train_y), torch.bincount(val_y, minlength=10)
    assert ((val_counts - 0.1 * counts).abs() <= 1).all()

    config = load_config(methods="original,retrain,gradient_ascent", tune_methods="gradient_ascent", seeds="0,1",
                         tune_trials=1, epochs=2, data_root=str(tmp_path))  # fmt: skip
    grid = expand_grid(config)
    trained = grid.stage("train")
    assert trained and all(c.params["holdout"] == {"fraction": 0.1, "seed": 0} for c in trained)
    artifacts = {}

    def load(key):
        return artifacts[key]

    settings = CellSettings(str(tmp_path))
    trial = grid.stage("tune")[0]
    for key in trial.inputs.values():
        artifact = execute_cell(grid.cells[key], load, settings)
        artifacts[key] = (artifact.meta | {"key": key}, _tensors(artifact))
    assert artifacts[trial.inputs["original:0"]][0]["metrics"]["train_images"] == len(kept.train_y)
    hparams = {"epochs": 1, "lr": 0.01, "batch_size": 64, "clip": 100.0}
    scored = execute_cell(trial, load, settings, hparams=hparams).meta["metrics"]

    import cvmf_ray.cells as cells

    blank = dataclasses.replace(digits, test_x=torch.zeros_like(digits.test_x), test_y=torch.zeros_like(digits.test_y))
    cells._RETRAIN_PROBES.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cells, "load_dataset", lambda name, root: blank)
        cells.load_split.cache_clear()
        blanked = execute_cell(trial, load, settings, hparams=hparams).meta["metrics"]
    cells.load_split.cache_clear()
    same = ("objective", "retain_accuracy", "forget_accuracy", "validation_accuracy", "mia", "retrain_mia")
    assert {k: scored[k] for k in same} == {k: blanked[k] for k in same}
    assert scored["status"] == "ok" and scored["hparams"] == hparams

    exploding = {**hparams, "lr": 1e6, "clip": 1e9}  # gradient ascent that diverges: the worst score, recorded
    diverged = execute_cell(trial, load, settings, hparams=exploding).meta["metrics"]
    assert diverged["status"] == "diverged" and diverged["objective"] == WORST and "not finite" in diverged["error"]

    rows = {trial.key: tuning_row(trial, {"metrics": scored, "interval": [0, 1]})}
    failed = Cell.make("tune", None, {**trial.params, "trial": 1}, trial.inputs)
    grid.add(failed)
    table = tuning_table(grid, rows, {failed.key: "its original (seed 0) did not finish"}).to_pylist()
    assert [(t["trial"], t["status"], t["best"]) for t in table] == [(0, "ok", True), (1, "failed", False)]
    assert table[1]["objective"] == WORST and table[1]["error"] == "its original (seed 0) did not finish"


def _tensors(artifact):
    from cvmf_ray.cells import decode

    return decode("k", artifact.blob)


def test_rows_kept_from_a_table_written_before_the_tuned_column_say_whether_they_are_tuned():
    import pyarrow as pa

    old = pa.Table.from_pylist([{"key": "a", "method": "salun", "status": "ok"},
                                {"key": "b", "method": "salun@tuned", "status": "ok"}])  # fmt: skip
    rows, _ = rows_from_table(old, {"a", "b"})
    assert (rows["a"]["tuned"], rows["b"]["tuned"]) == (False, True)


def test_the_objective_and_the_choice():
    retrain = {"retain_accuracy": 0.9, "forget_accuracy": 0.0, "validation_accuracy": 0.85, "mia": 0.2}
    assert score(retrain, retrain)["objective"] == 0
    far = score({"retain_accuracy": 0.6, "forget_accuracy": 0.9, "validation_accuracy": 0.55, "mia": 0.5}, retrain)
    assert far["objective"] == pytest.approx(math.sqrt((0.3 / 3) ** 2 + (0.9 / 3) ** 2 + (0.3 / 3) ** 2 + 0.3**2))
    diverged = score({**retrain, "mia": math.nan}, retrain)
    assert diverged["objective"] == WORST == pytest.approx(math.sqrt(1 / 3 + 1))
    ok = {"status": "ok"}
    trials = {3: {**ok, "objective": 0.2}, 1: {**ok, "objective": 0.2}, 0: {**ok, "objective": 0.5},
              2: {"status": "diverged", "objective": 0.0}}  # fmt: skip
    assert best_trial(trials) == 1  # ties go to the earlier trial; a diverged one is never chosen
    assert best_trial({2: trials[2]}) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tune", "forget_all"], "unknown method 'forget_all'"),
        (["--tune", "retrain"], "--tune retrain: only unlearning methods are tuned"),
        (["--tune-trials", "0"], "invalid value 0 for --tune-trials"),
        (["--tune-seeds", "7"], "--tune-seeds 7 is not a seed of the grid"),
        (["--tune-seeds", "0,1"], "leaves no seed of --seeds [0, 1] to evaluate the tuned values on"),
        (["--methods", "original,gradient_ascent"], "--tune needs retrain in --methods"),
        (["--methods", "original,retrain", "--tune", "all"], "--tune all: --methods has no unlearning method"),
        (["--tune", "", "--tune-trials", "3"], "--tune-trials (tune.trials) is given but no method is tuned"),
        (["--seeds", "0"], "the tuning seed (the first of --seeds) [0] leaves no seed of --seeds [0]"),
        (["--config", "space.yaml"], "gradient_ascent.lr"),
        (["--config", "unknown.yaml"], "gradient_ascent.momentum"),
    ],
)
def test_bad_tuning_values_are_one_line_and_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    spaces = "tune:\n  spaces:\n    gradient_ascent:\n      "
    (tmp_path / "space.yaml").write_text(spaces + "lr: {loguniform: [0.1, 0.01]}\n")
    (tmp_path / "unknown.yaml").write_text(spaces + "momentum: {uniform: [0, 1]}\n")
    base = {"--methods": "original,retrain,gradient_ascent", "--tune": "gradient_ascent", "--seeds": "0,1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, out, err = cli("grid", *[x for pair in base.items() for x in pair], "--dry-run")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not (tmp_path / "results").exists()
