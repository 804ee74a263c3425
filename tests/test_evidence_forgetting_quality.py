"""The NeurIPS 2023 challenge's forgetting quality on known answers: retrain against itself is perfect,
separable outputs score the floor, and the ε rule matches the published one case by case."""

import math

import numpy as np
import pytest
import torch

from cvmf_ray.evidence.forgetting_quality import attack_epsilon, challenge_score, forgetting_quality

FLOOR = 2 / 2**13  # every example at ε ≥ 6 (bin 13)


def models(count: int, scale: float = 3.0, seed: int = 0) -> list[torch.Tensor]:
    """`count` models' logits on the same 40 forget examples."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(40, 10, generator=generator) * scale for _ in range(count)]


@pytest.mark.parametrize("count", [2, 3, 10])
def test_retrain_against_itself_is_perfect(count):
    # 10 models run the logistic-regression attack too: its leave-out folds must not fake a separation
    retrain = models(count)
    assert forgetting_quality(retrain, retrain) == {"forgetting_quality": 1.0, "forgetting_quality_models": count}


@pytest.mark.parametrize("count", [2, 10])
def test_separable_outputs_score_the_floor_in_either_direction(count):
    confident, unsure = models(count, scale=30.0), models(count, scale=0.01, seed=1)  # losses ~0 vs ~ln 10
    assert forgetting_quality(confident, unsure)["forgetting_quality"] == pytest.approx(FLOOR)
    assert forgetting_quality(unsure, confident)["forgetting_quality"] == pytest.approx(FLOOR)


def test_fewer_than_two_models_give_null_and_unpaired_counts_are_refused():
    assert forgetting_quality(models(1), models(1)) == {"forgetting_quality": None, "forgetting_quality_models": 1}
    with pytest.raises(ValueError, match="3 evaluated models against 2 retrain models"):
        forgetting_quality(models(3), models(2))


@pytest.mark.parametrize(
    ("fpr", "fnr", "epsilon"),
    [
        (0.0, 0.0, math.inf),  # a perfect attack
        (0.0, 0.5, 0.0),  # one rate 0: the attack is ignored
        (0.5, 0.0, 0.0),
        (1.0, 1.0, math.inf),  # both logs undefined: always wrong is as telling as always right
        (0.5, 0.5, math.log(0.49) - math.log(0.5)),  # chance: negative, absorbed by max(0, ·)
        (0.1, 0.5, math.log(1 - 0.01 - 0.5) - math.log(0.1)),  # the larger of the two bounds
        (1.0, 0.5, math.log(1 - 0.01 - 0.5) - math.log(1.0)),  # one log undefined: the other one
    ],
)
def test_epsilon_follows_the_published_rule(fpr, fnr, epsilon):
    assert attack_epsilon(np.array(fpr), np.array(fnr)) == pytest.approx(epsilon)


def test_final_score_scales_by_utility_against_retrain():
    assert challenge_score(0.5, 0.9, 1.0, 0.8, 0.95) == pytest.approx(0.5 * 0.9 * 0.8 / 0.95)
    assert challenge_score(None, 0.9, 1.0, 0.8, 0.95) is None
