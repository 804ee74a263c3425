"""`evaluate` on a trained digits model: one forward per distinct image, the same metrics as evaluating each
split on its own, logits handed back, per-class accuracy, and random-sample forgetting."""

import dataclasses
import math

import pytest
import torch
from sklearn.metrics import recall_score

from cvmf_ray.forget import ForgetSpec, forget_masks, split_data
from cvmf_ray.privacy import privacy_metrics
from cvmf_ray.schema import METRICS, SPLITS
from cvmf_ray.stages import evaluate
from cvmf_ray.stages.evaluate import classification_metrics, predict

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
