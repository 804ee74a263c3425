"""Output-space distance to retrain and per-class accuracy, against scipy on small known cases."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax

from cvmf_ray.evidence.outputs import distance_to_retrain, js_divergence, kl_divergence, per_class_accuracy


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(50, 10, generator=generator) * scale for scale in (1.0, 4.0)]


def test_identical_outputs_are_at_distance_zero(logits):
    model, _ = logits
    assert js_divergence(model, model) == pytest.approx(0, abs=1e-15)
    assert kl_divergence(model, model) == pytest.approx(0, abs=1e-15)


def test_js_and_kl_match_scipy(logits):
    model, retrain = logits
    p, q = softmax(retrain.double().numpy(), axis=1), softmax(model.double().numpy(), axis=1)
    # scipy's jensenshannon is the distance: the square root of the divergence
    expected_js = np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(q, p, strict=True)])
    assert js_divergence(model, retrain) == pytest.approx(expected_js, rel=1e-9)
    assert kl_divergence(retrain, model) == pytest.approx(rel_entr(p, q).sum(1).mean(), rel=1e-9)
    assert kl_divergence(retrain, model) != pytest.approx(kl_divergence(model, retrain), rel=1e-3)


def test_js_is_one_bit_for_disjoint_certain_outputs():
    model = torch.tensor([[100.0, 0.0, 0.0]])
    retrain = torch.tensor([[0.0, 100.0, 0.0]])
    assert js_divergence(model, retrain) == pytest.approx(1.0)
    assert js_divergence(model, retrain) == pytest.approx(js_divergence(retrain, model))


def test_columns_per_split_and_null_for_an_empty_split(logits):
    model, retrain = logits
    columns = distance_to_retrain(
        {"forget_train": model, "test": torch.empty(0, 10)}, {"forget_train": retrain, "test": torch.empty(0, 10)}
    )
    assert columns["js_to_retrain_forget_train"] == js_divergence(model, retrain)
    assert columns["kl_to_retrain_forget_train"] == kl_divergence(retrain, model)
    assert columns["js_to_retrain_test"] is None and columns["kl_to_retrain_test"] is None


def test_per_class_accuracy_counts_each_class_apart():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0])
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    assert per_class_accuracy(logits, y, num_classes=4) == [0.5, 2 / 3, 0.0, None]
