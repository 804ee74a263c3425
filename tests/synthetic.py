"""A synthetic results table whose statistics are known in closed form (tests and scripts/bench_report.py).

10 methods x 5 quant modes x 10 forget classes x 20 seeds = 10,000 ok rows, in the real results schema plus
the optional columns `privacy_score` and `test_class_accuracy`. In each (method, quant) group every metric is

    value = base + DELTA * (-1) ** (seed + forget_class)

so the deviations are +-DELTA, half of each sign, and over the group's n rows: mean = base exactly, sample
std = DELTA * sqrt(n / (n - 1)), 95% t half-width = t(0.975, n - 1) * DELTA / sqrt(n - 1). Recovery columns
use RECOVERY_DELTA instead; `privacy_score` exists only for seeds < 10 (n = 100); retrain's gap is exactly 0.
On top: one `unsir` row (n = 1), and 10 failed + 10 pending `boundary_shrink` rows that must not count.
`synthetic_tuning`: a tuning.parquet beside it, two studies whose every trial is spelt out in TUNING_STUDIES.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from cvmf_ray.schema import OBJECTIVE_COMPONENTS, SCHEMA, TUNING_SCHEMA

METHODS = [
    "original",
    "retrain",
    "finetune",
    "gradient_ascent",
    "neggrad_plus",
    "random_label",
    "l1_sparse",
    "salun",
    "scrub",
    "bad_teacher",
]
QUANTS = ["fp32", "bf16", "fp16", "int8", "int4_weight"]
BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4_weight": 4}  # what QUANT_MODES says (a test checks)
SEEDS, CLASSES = 20, 10
DELTA, RECOVERY_DELTA = 0.01, 0.05
GROUP_ROWS = SEEDS * CLASSES  # n of every full group
RECOVERY = ("recovery_forget_train_accuracy", "recovery_mia_efficacy")
METRICS = [f.name for f in SCHEMA if pa.types.is_floating(f.type) and f.name not in ("forget_fraction", *RECOVERY)]
GRID_METHODS = [*METHODS, "unsir", "boundary_shrink"]


def base(metric: str, method: str, quant: str) -> float:
    """The exact group mean of `metric` (retrain's gap to itself is 0)."""
    if metric == "gap_to_retrain" and method == "retrain":
        return 0.0
    return 0.2 + 0.05 * METHODS.index(method) + 0.02 * QUANTS.index(quant) + 0.001 * METRICS.index(metric)


def recovery_base(method: str, quant: str) -> float:
    """The exact mean recovery: 0 at fp32 is absent (NaN); some cells clear their interval, some do not."""
    return 0.01 * (METHODS.index(method) % 3 - 1) * QUANTS.index(quant) / 4


def synthetic_table(seed: int = 0, weight_bits: bool = True) -> pa.Table:
    """The table described above; `weight_bits=False` leaves out that column, as tables written before it did."""
    method, quant, forget_class, row_seed = (
        a.ravel() for a in np.meshgrid(METHODS, QUANTS, range(CLASSES), range(SEEDS), indexing="ij")
    )
    sign = np.where((row_seed + forget_class) % 2 == 0, 1.0, -1.0)
    n = len(method)
    columns = {
        "key": [f"k{i:05d}" for i in range(n)],
        "parent_key": [f"p{i:05d}" for i in range(n)],
        "model": ["resnet18"] * n,
        "dataset": ["cifar10"] * n,
        "seed": row_seed,
        "forget_class": forget_class,
        "forget_fraction": np.full(n, np.nan),
        "method": method,
        "quant": quant,
        "weight_bits": np.array([BITS[q] for q in quant]),
        "status": ["ok"] * n,
        "error": [None] * n,
        "model_bytes": np.array([BITS[q] * 125_000 for q in quant]),
        "method_params": ["{}"] * n,
    }
    for metric in METRICS:
        spread = np.where((metric == "gap_to_retrain") & (method == "retrain"), 0.0, DELTA)
        columns[metric] = np.array([base(metric, m, q) for m, q in zip(method, quant, strict=True)]) + spread * sign
    for metric in RECOVERY:
        values = np.array([recovery_base(m, q) for m, q in zip(method, quant, strict=True)]) + RECOVERY_DELTA * sign
        columns[metric] = np.where(quant == "fp32", np.nan, values)
    columns["unlearn_seconds"] = np.where(method == "original", np.nan, columns["unlearn_seconds"])
    columns["privacy_score"] = np.where(row_seed < 10, columns["mia_efficacy"], np.nan)
    columns["test_class_accuracy"] = [_class_accuracy(m, c) for m, c in zip(method, forget_class, strict=True)]
    schema = _schema(weight_bits)
    table = pa.table({f.name: columns.get(f.name, [None] * n) for f in schema}, schema=schema)
    table = table.take(np.random.default_rng(seed).permutation(n))  # first appearance is not the grid's order
    table = pa.concat_tables([table, _extra_rows(schema)])
    return table.replace_schema_metadata({"cvmf_ray.run": json.dumps(_run())})


def _class_accuracy(method: str, forget_class: int) -> list[float | None] | None:
    """Original: 0.95 on every class. Retrain without c: 0 on c, 0.9 elsewhere, one class with no image (null)."""
    if method == "original":
        return [0.95] * CLASSES
    if method == "retrain":
        values = [0.9] * CLASSES
        values[forget_class], values[(forget_class + 1) % CLASSES] = 0.0, None
        return values
    return None


def _schema(weight_bits: bool) -> pa.Schema:
    """The real results schema, plus the optional columns this table fills (weight_bits: unless it is there)."""
    extra = [("privacy_score", pa.float64()), ("test_class_accuracy", pa.list_(pa.float64()))]
    schema = pa.schema([*SCHEMA, *(field for field in extra if field[0] not in SCHEMA.names)])
    if weight_bits and "weight_bits" not in schema.names:
        schema = schema.insert(schema.get_field_index("quant") + 1, pa.field("weight_bits", pa.int64()))
    return schema if weight_bits else pa.schema([f for f in schema if f.name != "weight_bits"])


def _extra_rows(schema: pa.Schema) -> pa.Table:
    """One n = 1 row, then rows that never produced metrics: failed (with a reason) and pending."""
    ok = {"method": "unsir", "quant": "fp32", "seed": 0, "forget_class": 0, "status": "ok", "test_accuracy": 0.5}
    failed = [
        {"method": "boundary_shrink", "quant": q, "seed": s, "forget_class": 0, "status": "failed"}
        | {"error": f"unlearn cell u{s} failed: loss is NaN at step {s}"}
        for q in ("fp32", "int8")
        for s in range(5)
    ]
    pending = [
        {"method": "boundary_shrink", "quant": "fp16", "seed": s, "forget_class": 1, "status": "pending"}
        for s in range(10)
    ]
    rows = [
        {"key": f"x{i}", "model": "resnet18", "dataset": "cifar10", "weight_bits": BITS[row["quant"]], **row}
        for i, row in enumerate([ok, *failed, *pending])
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def _run() -> dict:
    return {
        "grid": {"name": "synthetic", "models": ["resnet18"], "datasets": ["cifar10"], "methods": GRID_METHODS},
        "counts": {"train": {"done": 220, "failed": 0, "pending": 0}, "evaluate": {"done": 10001, "failed": 10}},
        "versions": {"cvmf-ray": "0.1.0", "torch": "2.15.0"},
        "hardware": {"cpu": "synthetic", "cpus": 2, "gpus": []},
        "started": "2026-01-01T00:00:00",
        "finished": "2026-01-01T01:00:00",
        "wall_seconds": 3600.0,
    }


WORST = math.sqrt(4 / 3)  # what a failed or diverged trial scores (cvmf_ray.objective.WORST)
TUNING_STUDIES = {  # study -> (identity, published values, each trial's values, objectives, statuses, chosen trial)
    "s-ga": (
        {"forget_class": 3, "forget_fraction": None, "method": "gradient_ascent"},
        {"lr": 1e-4, "epochs": 5, "momentum": 0.9},
        [{"lr": lr, "epochs": 5, "momentum": 0.9} for lr in (1e-3, 3e-4, 1e-2, 3.16e-5, 5e-4, 2e-4)],
        [0.5, 0.3, WORST, 0.2, 0.25, 0.22],
        ["ok", "ok", "diverged", "ok", "ok", "ok"],
        3,
    ),
    "s-ft": (
        {"forget_class": None, "forget_fraction": 0.1, "method": "finetune"},
        {"lr": 0.01, "epochs": 10, "weight_decay": 5e-4},
        [{"lr": 0.01, "epochs": e, "weight_decay": 1e-3} for e in (2, 4, 8, 16, 20, 12)],
        [0.4, WORST, 0.35, 0.36, 0.1, 0.2],
        ["ok", "failed", "ok", "ok", "ok", "ok"],
        4,
    ),
}


def synthetic_tuning() -> pa.Table:
    """A tuning.parquet of TUNING_STUDIES: two studies x six trials, one diverged, one failed."""
    rows = []
    for study, (identity, published, values, objectives, statuses, chosen) in TUNING_STUDIES.items():
        for trial, (hparams, objective, status) in enumerate(zip(values, objectives, statuses, strict=True)):
            ok = status == "ok"
            rows.append(
                {"study": study, "key": f"{study}-{trial}", "model": "resnet18", "dataset": "cifar10", **identity}
                | {"trial": trial, "seeds": "0,1", "hparams": json.dumps(hparams), "published": json.dumps(published)}
                | {"objective": objective, "status": status, "best": trial == chosen}
                | {c: objective / 2 if ok else None for c in OBJECTIVE_COMPONENTS}
                | {"error": None if ok else f"trial {trial}: loss is NaN", "seconds": 3.0}
            )
    return pa.Table.from_pylist(rows, schema=TUNING_SCHEMA)
