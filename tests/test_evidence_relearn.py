"""Relearn time on digits: the original is already there, knowledge that was only hidden comes back faster
than a model that never saw the class learns it, and a quantized row relearns from its grid weights."""

import copy

import pytest
import torch

from cvmf_ray.config import RelearnParams
from cvmf_ray.evidence.relearn import dequantized_copy, relearn
from cvmf_ray.forget import ForgetSpec, forget_mask
from tests.test_evidence_mechanism import grid_quantizer

FORGET = ForgetSpec("class", 0)


@pytest.fixture(scope="module")
def forget_set(digits):
    mask = forget_mask(FORGET, digits.train_y, seed=0)
    return digits.train_x[mask], digits.train_y[mask], digits.mean, digits.std


def hidden(model):
    """The original with class 0 only suppressed: its output unit silenced, every feature left intact."""
    suppressed = copy.deepcopy(model)
    with torch.no_grad():
        suppressed[-1].weight[0].zero_()
        suppressed[-1].bias[0] = -10.0
    return suppressed


def test_the_original_has_nothing_to_relearn(original, forget_set):
    assert relearn(original, *forget_set)["relearn_steps"] == 0


def test_hidden_knowledge_returns_faster_than_retrain_learns_it(original, retrain, forget_set):
    suppressed = hidden(original)
    before = {k: v.clone() for k, v in suppressed.state_dict().items()}
    from_hidden, from_retrain = relearn(suppressed, *forget_set), relearn(retrain, *forget_set)
    assert 0 < from_hidden["relearn_steps"] < from_retrain["relearn_steps"]
    assert from_retrain["relearn_seconds"] > 0
    assert all(torch.equal(before[k], v) for k, v in suppressed.state_dict().items())  # tuned a copy only


def test_not_reaching_the_threshold_is_null(retrain, forget_set):
    assert relearn(retrain, *forget_set, RelearnParams(max_steps=2))["relearn_steps"] is None


def test_a_quantized_row_relearns_from_its_grid_weights(original, forget_set):
    quantize = grid_quantizer(4)
    suppressed = hidden(original)
    grid_model = dequantized_copy(suppressed, quantize)
    conv, fc = grid_model[0].weight, grid_model[-1].weight
    assert torch.equal(conv, quantize(suppressed[0].weight.detach()))
    assert not torch.equal(conv, suppressed[0].weight)  # the copy changed, the model did not
    assert torch.equal(grid_model[1].running_mean, suppressed[1].running_mean)  # BatchNorm is off-grid
    assert fc[0].abs().sum() == 0  # the silenced row stays silenced on the grid
    assert relearn(grid_model, *forget_set)["relearn_steps"] > 0
