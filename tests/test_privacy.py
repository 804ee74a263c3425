"""Membership-inference metrics on real models: an original model and the retrained gold standard that never
saw class 0, on digits; and the flat metric dict evaluate() returns for the results table."""

import math

import numpy as np

from cvmf_ray.forget import ForgetSpec, forget_masks
from cvmf_ray.privacy import seed_lr_accuracy, svc_efficacy
from cvmf_ray.schema import METRICS, SPLITS
from cvmf_ray.stages import evaluate, quantize
from cvmf_ray.stages.quantize import calibration_images

FORGET = ForgetSpec("class", 0)
MIA = ("mia_efficacy", "mia_forget_auc", "mia_seed_lr_accuracy", "mia_retain_auc")


def _evaluate(model, digits, forget=FORGET):
    return evaluate(model, digits, *forget_masks(digits, forget, seed=0))[0]


def test_attacks_tell_the_original_from_the_model_that_never_saw_the_class(original, retrain, digits):
    before, gold = _evaluate(original, digits), _evaluate(retrain, digits)
    assert before["forget_train_accuracy"] > 0.95 and gold["forget_train_accuracy"] == 0

    # the SVC calls the original's class-0 training images members, the retrained model's non-members
    assert before["mia_efficacy"] < 0.2
    assert gold["mia_efficacy"] > 0.9
    # same-class held-out images: to the retrained model, seen and unseen zeros look alike; 3 standard errors
    # of a chance AUC (Hanley & McNeil 1982) with 133 forget-train vs 45 forget-test zeros = 0.15
    n_members, n_heldout = int((digits.train_y == 0).sum()), int((digits.test_y == 0).sum())
    standard_error = math.sqrt((n_members + n_heldout + 1) / (12 * n_members * n_heldout))
    assert abs(gold["mia_forget_auc"] - 0.5) < 3 * standard_error
    # the starting kit's pairing (forget-train vs all test classes) is confounded by class: it flags the
    # retrained model, which never saw these images, far more than the original
    assert gold["mia_seed_lr_accuracy"] > 0.9 > before["mia_seed_lr_accuracy"] + 0.2


def test_evaluate_returns_the_contract_columns(original, digits):
    calibration = calibration_images(digits, FORGET, seed=0, size=512)
    int8_model, _ = quantize(original, "int8", calibration)
    per_class = {"test_class_accuracy", "train_class_accuracy"}
    expected = {f"{s}_{m}" for s in SPLITS for m in METRICS} | set(MIA) | per_class | {"eval_seconds"}
    fp32, int8 = _evaluate(original, digits), _evaluate(int8_model, digits)
    for metrics in (fp32, int8):
        assert set(metrics) == expected
        assert all(
            0 <= v <= 1 for k, v in metrics.items() if not k.endswith(("_loss", "_seconds")) and k not in per_class
        )
        assert len(metrics["test_class_accuracy"]) == 10 and all(0 <= v <= 1 for v in metrics["test_class_accuracy"])
    # quantizing a model that was not unlearnt leaves its membership signal where it was
    assert abs(int8["mia_efficacy"] - fp32["mia_efficacy"]) < 0.05

    # random-sample forgetting: no forget-class test images, so the whole test set is the held-out pool
    random_forget = _evaluate(original, digits, ForgetSpec("fraction", 0.1))
    assert random_forget["forget_test_accuracy"] is None
    assert all(math.isfinite(random_forget[name]) for name in MIA)
    assert random_forget["retain_test_accuracy"] == random_forget["test_accuracy"]


def test_svc_shadow_set_is_every_nonmember_against_the_first_as_many_members():
    # OPTML's SVC_MIA: members = retain-train[:len(non-members)]. The members past that point look like
    # non-members here; were they used, the attack could not call the target non-member.
    rng = np.random.default_rng(0)
    members = np.r_[rng.uniform(0.6, 1.0, 300), rng.uniform(0.0, 0.4, 300)]
    nonmembers = rng.uniform(0.0, 0.4, 300)
    assert svc_efficacy(members, nonmembers, target=rng.uniform(0.0, 0.4, 50)) == 1.0
    assert svc_efficacy(members, nonmembers, target=rng.uniform(0.6, 1.0, 50)) == 0.0


def test_seed_lr_accuracy_is_at_chance_on_one_distribution_and_perfect_on_two():
    rng = np.random.default_rng(1)
    same = rng.exponential(1.0, size=(2, 200))
    # the mean of 10 draws: a single draw wanders ±0.03 on 200 vs 200 samples
    assert abs(seed_lr_accuracy(same[0], same[1]) - 0.5) < 0.05
    assert seed_lr_accuracy(np.zeros(200), np.ones(300)) == 1.0  # the larger group is cut to balance
