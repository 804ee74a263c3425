"""The results table's columns, order and metadata: the one description `results` writes and `report` reads.

Torch-free on purpose: `cvmf-ray report` and `results` read a table without importing the ML stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyarrow as pa

SPLITS = ("test", "forget_test", "retain_test", "forget_train", "retain_train")
METRICS = ("accuracy", "precision", "recall", "f1", "loss")
PRIVACY = ("mia_efficacy", "mia_forget_auc", "mia_seed_lr_accuracy", "mia_retain_auc")
GAP_METRICS = ("forget_train_accuracy", "retain_train_accuracy", "test_accuracy", "mia_efficacy")
COSTS = ("train_seconds", "unlearn_seconds", "quantize_seconds", "eval_seconds")
MECHANISM = ("quant_update_ratio", "quant_snapped_back", "quant_update_to_step")
GROUP_COMPARISONS = ("forgetting_quality", "forgetting_quality_models")  # one per compare group, on each of its rows
COMPARISONS = ("js_to_retrain_forget_train", "js_to_retrain_test", "kl_to_retrain_forget_train",
               "kl_to_retrain_test", "privacy_score", *GROUP_COMPARISONS)  # fmt: skip
NOT_APPLICABLE = "not_applicable"  # the status of a row whose combination cannot apply (grid.py `skipped`)
RUN_METADATA = b"cvmf_ray.run"  # Parquet key-value metadata: the run's identity as JSON (results.run_info)

IDENTITY = [
    ("key", pa.string()),
    ("parent_key", pa.string()),
    ("model", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("forget_class", pa.int64()),
    ("forget_fraction", pa.float64()),
    ("method", pa.string()),
    ("tuned", pa.bool_()),  # METHOD@tuned: run with its study's chosen values (method_params has them, and the study)
    ("unlearn_bn", pa.string()),  # BatchNorm while unlearning: train | frozen (the control) | eval; null: none ran
    ("quant", pa.string()),
    ("bn_reestimate", pa.string()),  # the deployment step before quant: none | train | retain | test
    ("weight_bits", pa.int64()),  # bits per stored weight of the quant mode: 32, 16, 8, 4
    # ok | failed | pending (never ran: the run was interrupted) | not_applicable (`error` says why; no cells)
    ("status", pa.string()),
    ("error", pa.string()),
]
OWN = [
    *[(f"{s}_{m}", pa.float64()) for s in SPLITS for m in METRICS],
    *[(name, pa.float64()) for name in PRIVACY],
    ("test_class_accuracy", pa.list_(pa.float64())),
    ("train_class_accuracy", pa.list_(pa.float64())),
    *[(name, pa.float64()) for name in MECHANISM],
    ("quant_update_per_layer", pa.string()),  # JSON {layer: update rms / the mode's step there}
    ("relearn_steps", pa.int64()),
    ("relearn_seconds", pa.float64()),
    *[(name, pa.float64()) for name in COSTS],
    ("model_bytes", pa.int64()),
    ("method_params", pa.string()),  # JSON of the resolved hyperparameters
    ("bn_reestimate_batches", pa.int64()),  # what the BatchNorm step used (null without one)
    ("bn_reestimate_batch_size", pa.int64()),
]
DERIVED = [
    ("gap_to_retrain", pa.float64()),
    ("recovery_forget_train_accuracy", pa.float64()),
    ("recovery_mia_efficacy", pa.float64()),
    ("speedup_over_retrain", pa.float64()),
]
COMPARED = [
    *[(name, pa.int64() if name.endswith("_models") else pa.float64()) for name in COMPARISONS],
    ("compare_key", pa.string()),  # the compare cell the comparison columns come from
]
SCHEMA = pa.schema([*IDENTITY, *OWN, *DERIVED, *COMPARED])
IDENTITY_COLUMNS = [name for name, _ in IDENTITY]
OWN_COLUMNS = [name for name, _ in (*IDENTITY, *OWN)]  # what evaluations/KEY.json holds
TIMING_COLUMNS = (*COSTS, "speedup_over_retrain", "relearn_seconds")  # the columns that differ between reruns


def quant_order(bits: Mapping[str, float | None]) -> list[str]:
    """Quant modes widest first (fp32, 16-bit, 8-bit, 4-bit), equal widths by name, unknown widths last."""

    def unknown(name: str) -> bool:
        value = bits[name]
        return value is None or (isinstance(value, float) and math.isnan(value))

    return sorted(bits, key=lambda q: (unknown(q), 0 if unknown(q) else -bits[q], q))


# tuning.parquet: one row per tuning trial (cvmf_ray/objective.py and stages/tune.py say what each value measures)
OBJECTIVE_COMPONENTS = ("retain_gap", "forget_gap", "validation_gap", "mia_gap")
PROBED = ("retain_accuracy", "forget_accuracy", "validation_accuracy", "mia")  # a model on the tuning samples
TUNING = [
    ("study", pa.string()),  # the study's key: one per (model, dataset, forget set, method)
    ("key", pa.string()),  # the trial cell's key
    ("model", pa.string()),
    ("dataset", pa.string()),
    ("forget_class", pa.int64()),
    ("forget_fraction", pa.float64()),
    ("method", pa.string()),  # the method tuned (its rows in the results table are METHOD@tuned)
    ("trial", pa.int64()),  # 0 .. trials-1: the trial's place in its study, its identity across invocations
    ("seeds", pa.string()),  # the tuning seeds the trial ran on, comma-separated
    ("hparams", pa.string()),  # JSON: the trial's resolved hyperparameters (the searched ones and the rest)
    ("published", pa.string()),  # JSON: the method's values in this grid without tuning (defaults + method_params)
    ("objective", pa.float64()),  # minimised; a failed or diverged trial scores the worst possible value
    *[(name, pa.float64()) for name in OBJECTIVE_COMPONENTS],
    *[(name, pa.float64()) for name in PROBED],
    *[(f"retrain_{name}", pa.float64()) for name in PROBED],
    ("status", pa.string()),  # ok | diverged (scored worst) | failed (scored worst) | pending
    ("error", pa.string()),
    ("seconds", pa.float64()),  # the whole trial
    ("unlearn_seconds", pa.float64()),
    ("eval_seconds", pa.float64()),  # the bounded evaluation of the unlearnt model(s)
    ("best", pa.bool_()),  # the trial whose values the study chose (lowest objective, then lowest trial)
]
TUNING_SCHEMA = pa.schema(TUNING)
