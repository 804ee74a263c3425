"""Membership-inference (MIA) metrics for unlearning, from a model's logits on the five evaluation splits.

All four are population attacks on per-sample outputs under the evaluation transform, scikit-learn only,
fixed seeds; definitions and sources in `reference/quant-mia.md` §5:

- `mia_efficacy` (Jia et al., NeurIPS 2023; SalUn): an RBF SVC (C=3, gamma='auto') learns member vs
  non-member from the confidence p_y, on retain-train (members) vs retain-test (non-members: the test
  set without the forgotten class); the value is the fraction of forget-train samples it calls
  non-member. Higher = more forgotten; the target is the retrain model's value (~1 for a whole class).
- `mia_forget_auc`: ROC AUC of "lower loss = member" separating forget-train from held-out samples of the
  same distribution (forget-class test images; the whole test set for random-sample forgetting). 0.5 =
  indistinguishable from unseen data, which is what a retrained model gives.
- `mia_seed_lr_accuracy`: the NeurIPS 2023 unlearning-challenge starting kit's `simple_mia` (logistic
  regression on losses, forget-train vs the whole test set, balanced by subsampling, mean accuracy over 10
  stratified shuffle splits), kept for continuity with published numbers. Class-confounded when a whole
  class is forgotten: a model that never saw the class also scores high, since it separates the class,
  not membership.
- `mia_retain_auc`: the loss AUC of retain-train vs retain-test: the privacy of the data that was kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SEED = 0
# SVC training is quadratic in samples: non-members above this are subsampled (~3 s at CIFAR scale, 2 cores)
MAX_SHADOW = 5000


def privacy_metrics(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """`outputs` maps each split of `forget.SPLITS` to (fp32 logits, labels); forget_train must not be empty."""
    heldout = "forget_test" if len(outputs["forget_test"][1]) else "test"  # empty for random-sample forgetting
    loss = {s: per_sample_loss(*outputs[s]) for s in ("test", "retain_test", "forget_train", "retain_train", heldout)}
    confidence = {split: np.exp(-values) for split, values in loss.items()}  # p_y = exp(-cross-entropy)
    return {
        "mia_efficacy": svc_efficacy(confidence["retain_train"], confidence["retain_test"], confidence["forget_train"]),
        "mia_forget_auc": loss_auc(loss["forget_train"], loss[heldout]),
        "mia_seed_lr_accuracy": seed_lr_accuracy(loss["forget_train"], loss["test"]),
        "mia_retain_auc": loss_auc(loss["retain_train"], loss["retain_test"]),
    }


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Cross-entropy per sample in float64, so confidences near 1 keep their resolution."""
    return F.cross_entropy(logits.double(), y, reduction="none").numpy()


def svc_efficacy(members: np.ndarray, nonmembers: np.ndarray, target: np.ndarray) -> float:
    """Fraction of `target` an SVC trained on members[:n] (1) vs n non-members (0) predicts non-member."""
    if len(nonmembers) > MAX_SHADOW:
        nonmembers = np.random.default_rng(SEED).choice(nonmembers, MAX_SHADOW, replace=False)
    n = min(len(members), len(nonmembers))
    features = np.concatenate([members[:n], nonmembers[:n]])[:, None]
    labels = np.r_[np.ones(n), np.zeros(n)]
    from sklearn.svm import SVC  # scikit-learn is imported where used: ~1 s for every process importing us

    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float(1 - attack.predict(target[:, None]).mean())


def loss_auc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    labels = np.r_[np.ones(len(member_loss)), np.zeros(len(nonmember_loss))]
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, -np.concatenate([member_loss, nonmember_loss])))


def seed_lr_accuracy(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """The starting kit's `simple_mia`: balance by subsampling the larger group, 10-fold shuffled CV accuracy."""
    rng = np.random.default_rng(SEED)
    n = min(len(member_loss), len(nonmember_loss))
    members = rng.permutation(member_loss)[:n]
    nonmembers = rng.permutation(nonmember_loss)[:n]
    features = np.concatenate([nonmembers, members])[:, None]
    labels = np.r_[np.zeros(n), np.ones(n)]
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    splits = StratifiedShuffleSplit(n_splits=10, random_state=SEED)
    # the kit's LogisticRegression() objective (L2, C=1); Newton's method reaches the same optimum ~5x faster
    attack = LogisticRegression(solver="newton-cholesky")
    return float(cross_val_score(attack, features, labels, cv=splits, scoring="accuracy").mean())
