"""Membership-inference (MIA) metrics for unlearning, from a model's logits on the five evaluation splits.

All four are population attacks on per-sample outputs under the evaluation transform, scikit-learn only,
fixed seeds; each with its definition and source:

- `mia_efficacy` (Jia et al., NeurIPS 2023; SalUn): an RBF SVC (C=3, gamma='auto') learns member vs
  non-member from the confidence p_y, on retain-train (members) vs retain-test (non-members: the test
  set without the forgotten class); the value is the fraction of forget-train samples it calls
  non-member. Higher = more forgotten; the target is the retrain model's value (~1 for a whole class).
  As OPTML's `SVC_MIA` (Unlearn-Sparse `evaluation/SVC_MIA.py` + `main_forget.py` @ 80ba55d): all
  non-members, members = the first as many retain-train samples, in dataset order. It differs only in
  computing p_y = exp(−cross-entropy) in float64 (the reference: float32 softmax), and in taking every
  member when there are fewer members than non-members (the reference fails there).
- `mia_forget_auc`: ROC AUC of "lower loss = member" separating forget-train from held-out samples of the
  same distribution (forget-class test images; the whole test set for random-sample forgetting). 0.5 =
  indistinguishable from unseen data, which is what a retrained model gives.
- `mia_seed_lr_accuracy`: the NeurIPS 2023 unlearning-challenge starting kit's `simple_mia` (logistic
  regression on losses, forget-train vs the test set, accuracy over 10 stratified shuffle splits), kept
  for continuity with published numbers; the mean of `LR_DRAWS` seeded draws. Class-confounded when a
  whole class is forgotten: a model that never saw the class also scores high, since it separates the
  class, not membership. How it differs from the kit (unlearning-challenge/starting-kit
  `unlearning-CIFAR10.ipynb` @ 901e784c), see `seed_lr_accuracy`.
- `mia_retain_auc`: the loss AUC of retain-train vs retain-test: the privacy of the data that was kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cvmf_ray.evidence import logistic

SEED = 0
# One draw of the simple MIA varies by ±0.02–0.03 on digits (which test images, which folds); the mean of 10
# by √10 less. Fitted in one batch, the 100 regressions cost about what one draw's 10 sklearn fits did.
LR_DRAWS = 10


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
    """Fraction of `target` an SVC trained on members[:len(nonmembers)] (1) vs all non-members (0) predicts
    non-member. Cost grows faster than linearly with the shadow set: `scripts/bench_evidence.py` times it."""
    members = members[: len(nonmembers)]
    features = np.concatenate([members, nonmembers])[:, None]
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    from sklearn.svm import SVC  # scikit-learn is imported where used: ~1 s for every process importing us

    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float(1 - attack.predict(target[:, None]).mean())


def loss_auc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    labels = np.r_[np.ones(len(member_loss)), np.zeros(len(nonmember_loss))]
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, -np.concatenate([member_loss, nonmember_loss])))


def seed_lr_accuracy(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """The kit's `simple_mia`, averaged over `LR_DRAWS` draws. Draw k (seed SEED + k) subsamples the larger
    group to the smaller's size and scores 10-fold `StratifiedShuffleSplit(random_state=SEED + k)` accuracy;
    draw 0 alone is the value this column had before it was averaged.

    Differences from the kit: (1) the kit shuffles its forget losses once, unseeded, and cuts them to the
    test set's size (it expects more forget than test images); here the larger group is cut, whichever it
    is, so with a forgotten class (digits: 133 forget-train images against 450 test images) the test set is
    subsampled to 133 and chance is 0.5, where the kit's pairing would use all 450 at a chance level of
    0.77; (2) non-members are this dataset's whole test set, forgotten class included (the kit's: half of
    CIFAR-10's test set, the other half being validation); (3) the mean of `LR_DRAWS` seeded draws, not one;
    (4) the solver: `evidence.logistic` minimises the kit's `LogisticRegression()` objective (L2, C=1) for
    all folds at once, to 1e-9 of sklearn's coefficients, where the kit's lbfgs stops at a tolerance of 1e-4.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    n = min(len(member_loss), len(nonmember_loss))
    labels = np.r_[np.zeros(n), np.ones(n)]
    folds = []  # (train x, train y, test x, test y) of every fold of every draw, fitted together below
    for draw in range(LR_DRAWS):
        rng = np.random.default_rng(SEED + draw)
        members = rng.permutation(member_loss)[:n]
        nonmembers = rng.permutation(nonmember_loss)[:n]
        features = np.concatenate([nonmembers, members])
        for train, test in StratifiedShuffleSplit(n_splits=10, random_state=SEED + draw).split(features, labels):
            folds.append((features[train], labels[train], features[test], labels[test]))
    train_x, train_y, test_x, test_y = map(np.stack, zip(*folds, strict=True))
    return float((logistic.fit_predict(train_x, train_y, test_x) == test_y).mean())
