"""The Machine-Unlearning-Comparator's privacy score (Lee et al., TVCG 2026; JSON field `FQS`): the worst
of a set of threshold attacks that try to tell one model's outputs on the forget set from the retrain
model's, scored with the challenge's ε (`forgetting_quality`) but as a population attack on one model.

As gnueaj/Machine-Unlearning-Comparator computes it, `backend/app/utils/attack.py` @ 0e3ce99d
(`process_attack_metrics`, `calculate_scores`; called with t1 = 2, t2 = 1 on the forget class's
training images):

- two numbers per image: the entropy (natural log) of softmax(logits / 2), and the log-odds confidence
  log p_max − log(1 − p_max) of softmax(logits); each rounded to 2 decimals, as the reference stores them;
- each clipped to its range, entropy [0, 2.5] and confidence [−2.5, 10], and cut at 51 evenly spaced
  thresholds t; in each direction (the model's images as positives and retrain's as negatives, and the
  reverse) TPR = share of positives ≥ t, FPR = share of negatives ≥ t, FNR = 1 − TPR;
- per threshold: FPR = FNR = 0 → forget quality 0; FPR or FNR ≥ 1 − δ → 1; otherwise, with both rates
  clipped to [1e-10, 1 − δ − 1e-10], ε = max(0, min(log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR)) and
  forget quality 2^−ε; δ = 1e-5; attack score = 1 − forget quality, rounded to 3 decimals;
- privacy score = 1 − the highest attack score over thresholds, both numbers and both directions,
  rounded to 3 decimals. Retrain against itself scores 1 by construction.

Computed here in float64 (the log-odds as the logit margin z_max − logsumexp of the others, which does not
saturate); the reference's float32 softmax gives the same values after rounding to 2 decimals except at
rounding boundaries.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import entropy

DELTA, EPS = 1e-5, 1e-10
THRESHOLDS = 51
ENTROPY_TEMPERATURE, ENTROPY_RANGE = 2.0, (0.0, 2.5)
CONFIDENCE_RANGE = (-2.5, 10.0)


def privacy_score(logits: torch.Tensor, retrain_logits: torch.Tensor) -> float:
    """PS of a model from its and the retrain model's logits on the forget set's training images."""
    worst = 0.0
    for feature, value_range in ((softmax_entropy, ENTROPY_RANGE), (log_odds_confidence, CONFIDENCE_RANGE)):
        model, retrain = feature(logits), feature(retrain_logits)
        worst = max(worst, attack_score(model, retrain, value_range), attack_score(retrain, model, value_range))
    return round(1 - worst, 3)


def softmax_entropy(logits: torch.Tensor) -> np.ndarray:
    probabilities = torch.softmax(logits.double() / ENTROPY_TEMPERATURE, 1).numpy()
    return np.round(entropy(probabilities, axis=1), 2)


def log_odds_confidence(logits: torch.Tensor) -> np.ndarray:
    """log(p_max / (1 − p_max)) of softmax(logits) = z_max − logsumexp(the other logits)."""
    logits = logits.double()
    top = logits.max(1)
    others = logits.scatter(1, top.indices[:, None], -torch.inf).logsumexp(1)
    return np.round((top.values - others).numpy(), 2)


def attack_score(positives: np.ndarray, negatives: np.ndarray, value_range: tuple[float, float]) -> float:
    """The highest attack score over the thresholds, `positives` called positive when ≥ the threshold."""
    if len(positives) == 0 or len(negatives) == 0:
        return 0.0
    thresholds = np.linspace(*value_range, THRESHOLDS)
    positives, negatives = np.clip(positives, *value_range), np.clip(negatives, *value_range)
    fnr = 1.0 - (positives[:, None] >= thresholds).mean(0)
    fpr = (negatives[:, None] >= thresholds).mean(0)
    clipped_fpr, clipped_fnr = np.clip(fpr, EPS, 1 - DELTA - EPS), np.clip(fnr, EPS, 1 - DELTA - EPS)
    epsilon = np.maximum(
        0.0,
        np.minimum(
            np.log(1 - DELTA - clipped_fpr) - np.log(clipped_fnr),
            np.log(1 - DELTA - clipped_fnr) - np.log(clipped_fpr),
        ),
    )
    quality = np.where((fpr >= 1 - DELTA) | (fnr >= 1 - DELTA), 1.0, 2.0**-epsilon)
    quality = np.where((fpr == 0) & (fnr == 0), 0.0, quality)
    return float(np.round(1 - quality, 3).max())
