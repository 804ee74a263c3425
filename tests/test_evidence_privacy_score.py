"""The Machine-Unlearning-Comparator's privacy score on known answers."""

import math

import numpy as np
import pytest
import torch

from cvmf_ray.evidence.privacy_score import (
    CONFIDENCE_RANGE,
    ENTROPY_RANGE,
    attack_score,
    log_odds_confidence,
    privacy_score,
    softmax_entropy,
)


def logits(scale: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(200, 10, generator=torch.Generator().manual_seed(seed)) * scale


def test_retrain_against_itself_scores_one():
    retrain = logits(3.0)
    assert privacy_score(retrain, retrain) == 1.0


def test_a_model_still_sure_of_the_forgotten_class_scores_zero():
    # confident outputs (entropy ~0, log-odds ≥ 10) against a retrain model that is unsure (~ln 10, ~−2.2):
    # one threshold separates every image, FPR = FNR = 0
    assert privacy_score(logits(50.0), logits(0.01, seed=1)) == 0.0


def test_a_near_copy_of_retrain_scores_between():
    score = privacy_score(logits(3.0) + 0.3 * logits(1.0, seed=2), logits(3.0))
    assert 0 < score < 1


def test_the_two_numbers_on_uniform_outputs():
    uniform = torch.zeros(1, 10)
    assert softmax_entropy(uniform)[0] == round(math.log(10), 2)  # natural log, rounded as stored
    assert log_odds_confidence(uniform)[0] == round(math.log(0.1 / 0.9), 2)


def test_attack_score_by_hand():
    # half the positives above 1.0 and no negative there: at t in (0, 1], TPR = 0.5, FPR = 0, so both rates
    # are clipped to [1e-10, 1 - δ - 1e-10] and ε = min(log(1-δ-1e-10) - log 0.5, log(1-δ-0.5) - log 1e-10)
    positives, negatives = np.array([2.0, 2.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0])
    delta = 1e-5
    epsilon = min(math.log(1 - delta - 1e-10) - math.log(0.5), math.log(1 - delta - 0.5) - math.log(1e-10))
    assert attack_score(positives, negatives, ENTROPY_RANGE) == pytest.approx(round(1 - 2**-epsilon, 3))
    assert attack_score(negatives, negatives, CONFIDENCE_RANGE) == 0.0
