"""Per-example privacy against retrain: the NeurIPS 2023 Machine Unlearning Challenge's forgetting quality F
(Triantafillou et al., arXiv 2406.09073), computed over the grid's seeds.

For each forget example x, the evaluated method's N models (one per grid seed) and the retrain model's N
models each give one number; attacks try to tell the two groups apart; ε_x is the largest privacy loss an
attack proves, h_x = 2 / 2^bin(ε_x), and F = mean h_x: 1 = no attack tells the model from retrain on any
example. A population attack (`privacy.py`, `privacy_score`) asks whether the forget set *as a whole* looks
retrained; this asks it of every example, which is much stronger (Hayes et al., arXiv 2403.01218).

As the official scoring computes it, read from yunx-z/MLRC-Bench
`MLAgentBench/benchmarks_base/machine_unlearning/env/evaluation.py` @ 0471a5c2 (`cross_entropy_f`,
`best_threshold_attack`, `logistic_regression_attack`, `compute_epsilon_s`, `bin_index_fn`, `F`):

- the number: cross-entropy of the logits against the model's own argmax label (no true label needed);
- attack 1, every threshold t over the 2N pooled numbers: "number > t → evaluated model", FPR over the
  retrain models, FNR over the evaluated ones (in-sample);
- attack 2, logistic regression on the number (sklearn's defaults: L2, C = 1), cross-validated on
  `StratifiedShuffleSplit(n_splits=2, random_state=0)` (10% test), FPR and FNR averaged over the splits;
- per attack, FPR = FNR = 0 → ε = ∞; one of them 0 → the attack is ignored; otherwise
  ε = max(log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR), with ε = ∞ when both logs are undefined
  (FPR, FNR > 1−δ); δ = 0.01; ε_x = max(0, every attack's ε);
- bins of width 0.5: bin = `np.digitize(ε, 0.5·[0, 1, …, 12])` ∈ 1..13, so ε < 0.5 gives h = 1 and ε ≥ 6 gives
  h = 2⁻¹².

Differences: attack 2's regressions are solved for all examples at once (`evidence.logistic`: the same
objective as the reference's `LogisticRegression()`, to 1e-9 of sklearn's coefficients; sklearn took
~20 ms a fit here, 2 fits per example); the rest is forced by the grid's few seeds (the leaderboard used
N = 512, MLRC's dev mode 10):
- Attack 2 runs only when 2N ≥ 11: below that its 10% test fold holds fewer than one model per group and
  scikit-learn refuses (the reference raises). With 2–5 seeds F comes from the threshold attack alone.
- An attack-2 result no better than chance (FPR + FNR ≥ 1) gives ε = 0, where the reference gives ∞ at
  FPR = FNR = 1. With N = 10 each test fold holds one model per group; when the two groups' numbers are the
  same, the fitted rule learns the left-out pair backwards and misclassifies both, so the reference scores
  retrain against itself 0.71 (digits, 10 seeds) to 0.82 (synthetic) instead of 1, measured with its own
  code; with this rule its code gives exactly this module's F (`BENCHMARKS.md`). Everywhere else the two
  rules agree (the reference's ε is ≤ 0 whenever FPR + FNR ≥ 1), and a real separation is still found:
  logistic regression learns either direction, and attack 1 keeps the reference's FPR = FNR = 1 → ∞.
- With fewer than 2 models per group F is null: one model per group separates every example whose numbers
  differ at all (ε = ∞), so F would only say that two models are not the same model.

Reading F with few seeds: it is 1 when the outputs equal retrain's, but a method whose models are drawn from
the same distribution as retrain's scores well below 1, since the in-sample threshold sweep finds chance
separations: ≈0.64 with 2 seeds, 0.68 with 3, 0.57 with 5, 0.43 with 10 (`scripts/bench_evidence.py`).
Compare methods with each other and with that floor, not with 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cvmf_ray.evidence import logistic

DELTA = 0.01
BIN_WIDTH, BINS = 0.5, 13
CV_SPLITS, CV_SEED = 2, 0
MIN_POOL_FOR_REGRESSION = 11  # 10% test fold ≥ 2 samples, one per group: scikit-learn's own minimum


def forgetting_quality(logits: Sequence[torch.Tensor], retrain_logits: Sequence[torch.Tensor]) -> dict:
    """F over the forget set, from N evaluated models' and N retrain models' logits on it ((S, C) each,
    the same S examples in the same order; the grid's seeds, paired or not).

    Returns `{"forgetting_quality": F or None, "forgetting_quality_models": N}`.
    """
    if len(logits) != len(retrain_logits):
        raise ValueError(f"{len(logits)} evaluated models against {len(retrain_logits)} retrain models")
    models = len(logits)
    if models < 2:
        return {"forgetting_quality": None, "forgetting_quality_models": models}
    outputs = np.stack([argmax_cross_entropy(x) for x in logits], axis=1)  # (S, N)
    retrain = np.stack([argmax_cross_entropy(x) for x in retrain_logits], axis=1)
    epsilon = np.maximum(0.0, threshold_attack_epsilon(outputs, retrain))
    if 2 * models >= MIN_POOL_FOR_REGRESSION:
        epsilon = np.maximum(epsilon, regression_attack_epsilon(outputs, retrain))
    scores = 2.0 / 2.0 ** np.digitize(epsilon, np.arange(BINS) * BIN_WIDTH)
    return {"forgetting_quality": float(scores.mean()), "forgetting_quality_models": models}


def challenge_score(
    forgetting: float | None, retain_accuracy: float, retain_accuracy_retrain: float, test_accuracy: float,
    test_accuracy_retrain: float,
) -> float | None:  # fmt: skip
    """The challenge's final score: F × (RA / RA_retrain) × (TA / TA_retrain), accuracies averaged over seeds."""
    if forgetting is None:
        return None
    return forgetting * (retain_accuracy / retain_accuracy_retrain) * (test_accuracy / test_accuracy_retrain)


def argmax_cross_entropy(logits: torch.Tensor) -> np.ndarray:
    """Per example, cross-entropy against the model's own predicted label (float64: confident outputs keep
    their resolution instead of rounding to ties at 0)."""
    logits = logits.double()
    return F.cross_entropy(logits, logits.argmax(1), reduction="none").numpy()


def threshold_attack_epsilon(outputs: np.ndarray, retrain: np.ndarray) -> np.ndarray:
    """Attack 1 for every example at once: ε per example, maximised over the thresholds. Inputs (S, N)."""
    thresholds = np.concatenate([retrain, outputs], axis=1)[:, None, :]  # (S, 1, 2N)
    fpr = (retrain[:, :, None] > thresholds).mean(1)  # retrain models called "evaluated"
    fnr = (outputs[:, :, None] <= thresholds).mean(1)  # evaluated models called "retrain"
    return attack_epsilon(fpr, fnr).max(1)


def regression_attack_epsilon(outputs: np.ndarray, retrain: np.ndarray) -> np.ndarray:
    """Attack 2 for every example at once, a result no better than chance counted as ε = 0 (module docstring)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    models = outputs.shape[1]
    labels = np.r_[np.zeros(models), np.ones(models)]  # retrain 0, evaluated 1: the reference's order
    samples = np.concatenate([retrain, outputs], axis=1)  # (S, 2N)
    fpr = fnr = 0.0
    # the folds depend on the labels only, and those are the same for every example
    for train, test in StratifiedShuffleSplit(n_splits=CV_SPLITS, random_state=CV_SEED).split(labels, labels):
        train_y = np.broadcast_to(labels[train], (len(samples), len(train)))
        called_evaluated = logistic.fit_predict(samples[:, train], train_y, samples[:, test])
        truth = labels[test] == 1
        fpr = fpr + called_evaluated[:, ~truth].mean(1) / CV_SPLITS
        fnr = fnr + (~called_evaluated[:, truth]).mean(1) / CV_SPLITS
    return np.where(fpr + fnr >= 1, 0.0, attack_epsilon(fpr, fnr))


def attack_epsilon(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """The reference's `compute_epsilon_s` rule for each (FPR, FNR) pair, elementwise; an ignored attack
    (exactly one rate 0) gives 0, which the max with 0 absorbs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        by_fnr = np.log(1 - delta - fpr) - np.log(fnr)
        by_fpr = np.log(1 - delta - fnr) - np.log(fpr)
    epsilon = np.where(np.isnan(by_fnr) & np.isnan(by_fpr), np.inf, np.fmax(by_fnr, by_fpr))
    epsilon = np.where((fpr == 0) != (fnr == 0), 0.0, epsilon)
    return np.where((fpr == 0) & (fnr == 0), np.inf, epsilon)
