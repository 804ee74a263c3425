"""`evaluate` on a trained digits model: one forward per distinct image, the same metrics as evaluating each
split on its own, logits handed back, per-class accuracy, random-sample forgetting, and a bounded evaluation
(a retain sample) in the function and through the grid's cells."""

import dataclasses
import math

import pytest
import torch
from sklearn.metrics import recall_score

from cvmf_ray.cells import CellSettings, decode, execute_cell
from cvmf_ray.config import load_config
from cvmf_ray.evidence.outputs import per_class_accuracy
from cvmf_ray.forget import ForgetSpec, forget_masks, retain_sample, split_data
from cvmf_ray.grid import expand_grid
from cvmf_ray.privacy import privacy_metrics
from cvmf_ray.schema import METRICS, SPLITS
from cvmf_ray.stages import evaluate
from cvmf_ray.stages.evaluate import classification_metrics, predict, split_outputs

FORGET = ForgetSpec("class", 0)


def _masks(data, spec=FORGET):
    return forget_masks(data, spec, seed=0)


def test_each_image_is_inferred_once_and_the_metrics_are_those_of_each_split_on_its_own(original, digits):
    images_seen = []
    hook = original.register_forward_hook(lambda _m, args, _out: images_seen.append(len(args[0])))
    metrics, logits = evaluate(original, digits, *_masks(digits))
    hook.remove()
    assert sum(images_seen) == len(digits.train_x) + len(digits.test_x)  # `test` is not inferred twice

    # the computation this replaced: each split's images through the original, then its metrics
    outputs = {
        split: (predict(original, x, digits.mean, digits.std), y)
        for split, (x, y) in split_data(digits, FORGET, 0).items()
    }
    expected = {f"{s}_{k}": v for s, (lg, y) in outputs.items() for k, v in classification_metrics(lg, y).items()}
    expected |= privacy_metrics(outputs)
    assert set(metrics) == set(expected) | {"train_class_accuracy", "test_class_accuracy", "eval_seconds"}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert {f"{s}_{m}" for s in SPLITS for m in METRICS} <= set(metrics)
    assert metrics["eval_seconds"] > 0


def test_logits_come_back_fp32_on_the_cpu_one_row_per_image(original, digits):
    _, logits = evaluate(original, digits, *_masks(digits))
    assert set(logits) == {"train", "test"}
    for name, x in (("train", digits.train_x), ("test", digits.test_x)):
        assert logits[name].shape == (len(x), 10) and logits[name].dtype == torch.float32
        assert logits[name].device.type == "cpu" and logits[name].is_contiguous()
        assert torch.allclose(logits[name], predict(original, x, digits.mean, digits.std), atol=1e-5)
    assert logits["train"].untyped_storage().data_ptr() != logits["test"].untyped_storage().data_ptr()


def test_class_accuracy_is_each_classs_recall_and_null_for_a_class_without_images(original, digits):
    no_threes = digits.test_y != 3
    data = dataclasses.replace(digits, test_x=digits.test_x[no_threes], test_y=digits.test_y[no_threes])
    metrics, logits = evaluate(original, data, *_masks(data))
    for split, y in (("train", data.train_y), ("test", data.test_y)):
        per_class = metrics[f"{split}_class_accuracy"]
        assert len(per_class) == data.num_classes
        present = sorted(set(y.tolist()))
        recall = recall_score(y.numpy(), logits[split].argmax(1).numpy(), labels=present, average=None)
        assert [per_class[c] for c in present] == pytest.approx(list(recall))
    assert metrics["test_class_accuracy"][3] is None and metrics["train_class_accuracy"][3] is not None


def test_random_sample_forgetting_has_no_forget_test_split(original, digits):
    spec = ForgetSpec("fraction", 0.1)
    metrics, _ = evaluate(original, digits, *_masks(digits, spec))
    assert all(metrics[f"forget_test_{m}"] is None for m in METRICS)
    assert all(metrics[f"retain_test_{m}"] == metrics[f"test_{m}"] for m in METRICS)
    assert all(math.isfinite(metrics[name]) for name in metrics if name.startswith("mia_"))


def test_predict_leaves_the_model_as_it_was(original, digits):
    predict(original, digits.test_x, digits.mean, digits.std)
    assert all(p.is_contiguous() and not p.is_inference() for p in original.parameters())
    assert predict(original, digits.test_x[:0], digits.mean, digits.std).numel() == 0


def test_a_bounded_evaluation_reads_the_forget_and_test_sets_whole_and_a_seeded_sample_of_the_retain_set(
    original, digits
):
    train_forget, test_forget = _masks(digits)
    members = int((~test_forget).sum())  # the SVC attack's: the first as many retain images as retain-test images
    inferred = retain_sample(train_forget, test_forget, members + 200, seed=1)
    sample = inferred & ~train_forget
    assert inferred[train_forget].all() and int(sample.sum()) == members + 200
    assert sample[(~train_forget).nonzero().squeeze(1)[:members]].all()
    assert torch.equal(inferred, retain_sample(train_forget, test_forget, members + 200, seed=1))  # as its retrain
    assert not torch.equal(inferred, retain_sample(train_forget, test_forget, members + 200, seed=2))
    assert retain_sample(train_forget, test_forget, len(digits.train_y), seed=1).all()  # a cap above: everything

    images_seen = []
    hook = original.register_forward_hook(lambda _m, args, _out: images_seen.append(len(args[0])))
    metrics, logits = evaluate(original, digits, train_forget, test_forget, inferred=inferred)
    hook.remove()
    assert sum(images_seen) == int(inferred.sum()) + len(digits.test_x)

    full, full_logits = evaluate(original, digits, train_forget, test_forget)
    assert logits["train"].shape == full_logits["train"].shape and torch.isnan(logits["train"][~inferred]).all()
    assert torch.allclose(logits["train"][inferred], full_logits["train"][inferred], atol=1e-5)
    assert torch.allclose(logits["test"], full_logits["test"], atol=1e-5)
    for split in ("test", "forget_test", "retain_test", "forget_train"):  # read whole: as unbounded
        for name in METRICS:
            assert metrics[f"{split}_{name}"] == pytest.approx(full[f"{split}_{name}"], rel=1e-6), (split, name)
    # the retain split, its attacks and the per-class train accuracy are those of the full logits on the sample
    outputs = split_outputs(full_logits, digits, train_forget, test_forget, inferred)
    assert len(outputs["retain_train"][1]) == members + 200
    assert metrics["mia_efficacy"] == full["mia_efficacy"]  # the attack's members are all there
    for name, value in classification_metrics(*outputs["retain_train"]).items():
        assert metrics[f"retain_train_{name}"] == pytest.approx(value, rel=1e-6), name
    for name, value in privacy_metrics(outputs).items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    expected = per_class_accuracy(full_logits["train"][inferred], digits.train_y[inferred], digits.num_classes)
    assert metrics["train_class_accuracy"] == pytest.approx(expected)


def test_eval_retain_images_bounds_every_evaluate_cell_and_changes_no_other(tmp_path, digits):
    options = {"methods": "original,retrain", "quant": "fp32,int8", "epochs": 2, "data_root": str(tmp_path)}
    plain, bounded = expand_grid(load_config(**options)), expand_grid(load_config(**options, eval_retain_images=600))
    for stage in ("train", "quantize"):
        assert [c.key for c in bounded.stage(stage)] == [c.key for c in plain.stage(stage)]
    assert not any("retain_images" in c.params for c in plain.stage("evaluate"))
    assert {c.params["retain_images"] for c in bounded.stage("evaluate")} == {600}

    artifacts = {}
    settings = CellSettings(str(tmp_path))
    for key, cell in bounded.cells.items():  # parents before children
        artifact = execute_cell(cell, lambda k: artifacts[k], settings)
        artifacts[key] = (artifact.meta | {"key": key}, decode(key, artifact.blob))
    forgotten = int(_masks(digits)[0].sum())
    for cell in bounded.stage("evaluate"):
        meta, tensors = artifacts[cell.key]
        inferred = ~torch.isnan(tensors["train"]).any(1)
        assert int(inferred.sum()) == forgotten + 600
        assert all(math.isfinite(meta["metrics"][name]) for name in ("retain_train_accuracy", "mia_efficacy"))
    for cell in bounded.stage("compare"):  # the comparison reads the forget rows and the test set: all there
        (row,) = artifacts[cell.key][0]["metrics"]["rows"].values()
        assert row and all(math.isfinite(value) for value in row.values()), row
