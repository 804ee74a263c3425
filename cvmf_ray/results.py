"""Assemble the results table: one row per evaluate cell, failed ones included with their error.

Rows are built from the artifacts' meta.json along each cell's lineage, then the comparative columns
are derived: `gap_to_retrain` against the retrain row of the same (model, dataset, seed, forget set,
quant), `recovery_*` against the fp32 row of the same model, and `speedup_over_retrain`.
"""

from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq

from cvmf_ray.forget import SPLITS, ForgetSpec
from cvmf_ray.grid import Grid
from cvmf_ray.stages.evaluate import METRICS
from cvmf_ray.store import CorruptArtifact, RunStore

PRIVACY = ("mia_efficacy", "mia_forget_auc", "mia_seed_lr_accuracy", "mia_retain_auc")
GAP_METRICS = ("forget_train_accuracy", "retain_train_accuracy", "test_accuracy", "mia_efficacy")
COSTS = ("train_seconds", "unlearn_seconds", "quantize_seconds", "eval_seconds")

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("parent_key", pa.string()),
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("seed", pa.int64()),
        ("forget_class", pa.int64()),
        ("forget_fraction", pa.float64()),
        ("method", pa.string()),
        ("quant", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        *[(f"{s}_{m}", pa.float64()) for s in SPLITS for m in METRICS],
        *[(name, pa.float64()) for name in PRIVACY],
        ("gap_to_retrain", pa.float64()),
        ("recovery_forget_train_accuracy", pa.float64()),
        ("recovery_mia_efficacy", pa.float64()),
        *[(name, pa.float64()) for name in COSTS],
        ("model_bytes", pa.int64()),
        ("speedup_over_retrain", pa.float64()),
        ("method_params", pa.string()),  # JSON of the resolved hyperparameters
    ]
)
TIMING_COLUMNS = (*COSTS, "speedup_over_retrain")  # the only columns that differ between identical reruns


def build_rows(grid: Grid, store: RunStore) -> list[dict]:
    failures = store.failures()
    rows = [_row(grid, store, cell.key, failures) for cell in grid.stage("evaluate")]
    _derive(rows)
    order = {m: i for i, m in enumerate(_methods_in(grid))}
    rows.sort(key=lambda r: (r["model"], r["dataset"], r["seed"], _forget_order(r), order[r["method"]], r["quant"]))
    return [{name: _clean(row.get(name)) for name in SCHEMA.names} for row in rows]


def _methods_in(grid: Grid) -> list[str]:
    return list(dict.fromkeys(c.params["method"] for c in grid.stage("evaluate")))


def _forget_order(row: dict) -> tuple:
    return (row["forget_class"] is None, row["forget_class"] or 0, row["forget_fraction"] or 0.0)


def _row(grid: Grid, store: RunStore, key: str, failures: dict[str, str]) -> dict:
    cell = grid.cells[key]
    p = cell.params
    forget = ForgetSpec(**p["forget"])
    row = {
        "key": key,
        "parent_key": cell.parent,
        "model": p["model"],
        "dataset": p["dataset"],
        "seed": p["seed"],
        "forget_class": forget.forget_class,
        "forget_fraction": forget.forget_fraction,
        "method": p["method"],
        "quant": p["quant"],
    }
    metas = []
    for ancestor in grid.lineage(key):
        try:
            metas.append(store.read_meta(ancestor.key))
        except CorruptArtifact:
            error = failures.get(ancestor.key, "did not run")
            where = "" if ancestor.key == key else f"{ancestor.stage} cell {ancestor.key} failed: "
            return {**row, "status": "failed", "error": where + error.split(" failed: ")[-1]}
    row.update(status="ok", error=None)
    for meta in reversed(metas):  # nearest last, so a quantized model's size overrides its fp32 parent's
        metrics = meta["metrics"]
        if meta["stage"] == "train":
            row["train_seconds"] = metrics.get("train_seconds")
            if meta["params"]["exclude"] is not None:  # retraining is this method's unlearning cost
                row["unlearn_seconds"] = metrics.get("train_seconds")
        elif meta["stage"] == "unlearn":
            row["unlearn_seconds"] = metrics.get("unlearn_seconds")
            row["method_params"] = json.dumps(meta["params"]["hparams"], sort_keys=True)
        elif meta["stage"] == "quantize":
            row["quantize_seconds"] = metrics.get("quantize_seconds")
        else:
            row.update({k: v for k, v in metrics.items() if k != "model_bytes"})
        if "model_bytes" in metrics:
            row["model_bytes"] = metrics["model_bytes"]
    return row


def _derive(rows: list[dict]) -> None:
    def same(row: dict, **changes) -> tuple:
        base = {k: row[k] for k in ("model", "dataset", "seed", "forget_class", "forget_fraction", "method", "quant")}
        return tuple({**base, **changes}.values())

    ok = {same(r): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        retrain = ok.get(same(row, method="retrain"))
        if retrain is not None:
            gaps = [abs(row[m] - retrain[m]) for m in GAP_METRICS if _num(row.get(m)) and _num(retrain.get(m))]
            row["gap_to_retrain"] = sum(gaps) / len(gaps) if gaps else None
            if row.get("unlearn_seconds") and retrain.get("unlearn_seconds"):
                row["speedup_over_retrain"] = retrain["unlearn_seconds"] / row["unlearn_seconds"]
        fp32 = ok.get(same(row, quant="fp32"))
        if row["quant"] != "fp32" and fp32 is not None:
            # positive = quantization undid forgetting: forget accuracy went up, MIA efficacy went down
            row["recovery_forget_train_accuracy"] = row["forget_train_accuracy"] - fp32["forget_train_accuracy"]
            if _num(row.get("mia_efficacy")) and _num(fp32.get("mia_efficacy")):
                row["recovery_mia_efficacy"] = fp32["mia_efficacy"] - row["mia_efficacy"]


def _num(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(rows: list[dict], store: RunStore) -> None:
    """evaluations/KEY.json per row, then results.parquet: both written atomically."""
    for row in rows:
        store.write_json(row, "evaluations", f"{row['key']}.json")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
    store.write_bytes(buffer.getvalue(), "results.parquet")


def read_results(store: RunStore) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes("results.parquet")))
