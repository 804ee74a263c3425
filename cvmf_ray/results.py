"""The results table: one row per evaluate cell, failed and pending ones included.

A row has three parts. Its own columns are what its evaluate cell measured plus the costs of the cells it
descends from; the cell writes them as `evaluations/KEY.json` (`evaluation_row`). Comparison columns set the
model beside the retrained gold standard over seeds; its group's compare cell computes them. Derived columns
need other rows and are recomputed whenever the table is assembled: `gap_to_retrain` against the retrain row
of the same (model, dataset, seed, forget set, quant, BatchNorm step), `recovery_*` against the fp32 row of the
same model before any deployment step, `speedup_over_retrain`. The driver assembles `results.parquet` from
the previous table and what the cells of this invocation reported, never from per-cell reads, except to
recover rows no table holds any more. A combination the grid skipped gets a row with status `not_applicable`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa

from cvmf_ray import schema
from cvmf_ray.config import BN_SOURCES, TUNED, UNLEARN_BN
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.grid import Cell, Grid
from cvmf_ray.objective import WORST, best_trial
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.schema import (
    COMPARED,
    GAP_METRICS,
    MECHANISM,
    OWN_COLUMNS,
    RUN_METADATA,
    SCHEMA,
    TUNING_SCHEMA,
    quant_order,
)

UNLEARN_BN_ORDER = (None, *UNLEARN_BN, "eval")


def identity(cell: Cell) -> dict:
    return {"key": cell.key, "parent_key": cell.parent, **_identity_of(cell.params)}


def _identity_of(p: dict) -> dict:
    """A row's identity from an evaluate cell's parameters (or a skipped combination's): a default BatchNorm
    treatment is not in the parameters (grid.py keeps old keys), so it is filled in here."""
    forget = ForgetSpec(**p["forget"])
    unlearnt = p["method"] not in ("original", "retrain")
    return {
        "model": p["model"],
        "dataset": p["dataset"],
        "seed": p["seed"],
        "forget_class": forget.forget_class,
        "forget_fraction": forget.forget_fraction,
        "method": p["method"],
        "tuned": p["method"].endswith(TUNED),
        "unlearn_bn": p.get("unlearn_bn", "train") if unlearnt else None,
        "quant": p["quant"],
        "bn_reestimate": p.get("bn_reestimate", "none"),
        "weight_bits": QUANT_MODES.get(p["quant"]).weight_bits if p["quant"] in QUANT_MODES else None,
    }


def evaluation_row(cell: Cell, meta: dict) -> dict:
    """The own columns of a finished evaluate cell, from its meta (its metrics and its lineage's)."""
    row = {**identity(cell), "status": "ok", "error": None}
    lineage = meta.get("lineage", {})
    train = lineage.get("train", {}).get("metrics", {})
    row["train_seconds"] = train.get("train_seconds")
    if cell.params["method"] == "retrain":  # retraining is this method's unlearning cost
        row["unlearn_seconds"] = train.get("train_seconds")
    if "unlearn" in lineage:
        unlearnt = lineage["unlearn"]["metrics"]
        row["unlearn_seconds"] = unlearnt.get("unlearn_seconds")
        study = {"study": unlearnt["tuned"]["study"], "trial": unlearnt["tuned"]["trial"]} if row["tuned"] else {}
        row["method_params"] = json.dumps({**lineage["unlearn"]["hparams"], "unlearn_bn": row["unlearn_bn"], **study},
                                          sort_keys=True)  # fmt: skip
    reestimated = lineage.get("reestimate", {}).get("metrics", {})
    row.update({name: reestimated.get(name) for name in ("bn_reestimate_batches", "bn_reestimate_batch_size")})
    quantized = lineage.get("quantize", {}).get("metrics", {})
    row.update({name: quantized.get(name) for name in (*MECHANISM, "quant_update_per_layer", "quantize_seconds")})
    nearest_model = next(lineage[s]["metrics"] for s in ("quantize", "reestimate", "unlearn", "train") if s in lineage)
    row["model_bytes"] = nearest_model.get("model_bytes")
    row.update({k: v for k, v in meta["metrics"].items() if k in OWN_COLUMNS})
    return {name: _clean(row.get(name)) for name in OWN_COLUMNS}


def failed_row(cell: Cell, status: str, error: str | None) -> dict:
    return {**dict.fromkeys(OWN_COLUMNS), **identity(cell), "status": status, "error": error}


def not_applicable_rows(grid: Grid) -> dict[str, dict]:
    """One row per combination the grid skipped, saying why (a deployment step on a model it cannot apply to)."""
    return {key: {**dict.fromkeys(OWN_COLUMNS), "key": key, **_identity_of(entry["params"]),
                  "status": schema.NOT_APPLICABLE, "error": entry["reason"]}
            for key, entry in grid.skipped.items()}  # fmt: skip


def assemble(grid: Grid, rows: dict[str, dict], comparisons: dict[str, dict], run_info: dict) -> pa.Table:
    """The table of every evaluate cell of `grid`, in a stable order, with comparison and derived columns.

    `rows`: key -> own columns (failed and pending rows included); `comparisons`: compare key -> that cell's
    output ({"rows": {evaluation key: columns}, "group": columns}).
    """
    table = [dict(rows[cell.key]) for cell in grid.stage("evaluate")] + list(not_applicable_rows(grid).values())
    by_key = {row["key"]: row for row in table}
    for cell in grid.stage("compare"):
        found = comparisons.get(cell.key)
        if found is None:
            continue
        for role, key in cell.inputs.items():
            if role.startswith("model:") and key in by_key and key in found["rows"]:
                by_key[key].update({**found["rows"][key], **found.get("group", {}), "compare_key": cell.key})
    _derive(table)
    methods = list(dict.fromkeys(c.params["method"] for c in grid.stage("evaluate")))
    quants = quant_order({row["quant"]: row["weight_bits"] for row in table})
    table.sort(key=lambda r: (r["model"], r["dataset"], r["seed"], _forget_order(r), methods.index(r["method"]),
                              UNLEARN_BN_ORDER.index(r["unlearn_bn"]), BN_SOURCES.index(r["bn_reestimate"]),
                              quants.index(r["quant"])))  # fmt: skip
    cleaned = [{name: _clean(row.get(name)) for name in SCHEMA.names} for row in table]
    metadata = {RUN_METADATA: json.dumps(run_info, default=str).encode()}
    return pa.Table.from_pylist(cleaned, schema=SCHEMA.with_metadata(metadata))


def _forget_order(row: dict) -> tuple:
    return (row["forget_class"] is None, row["forget_class"] or 0, row["forget_fraction"] or 0.0)


def _derive(rows: list[dict]) -> None:
    """`gap_to_retrain` against the retrain row of the same deployment (quant mode and BatchNorm step); `recovery_*`
    against the row's own fp32 model as unlearnt: what every deployment step together undid."""

    def same(row: dict, **changes) -> tuple:
        identity = ("model", "dataset", "seed", "forget_class", "forget_fraction", "method", "unlearn_bn", "quant",
                    "bn_reestimate")  # fmt: skip
        return tuple({**{k: row[k] for k in identity}, **changes}.values())

    ok = {same(r): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        retrain = ok.get(same(row, method="retrain", unlearn_bn=None))
        if retrain is not None:
            gaps = [abs(row[m] - retrain[m]) for m in GAP_METRICS if _num(row.get(m)) and _num(retrain.get(m))]
            row["gap_to_retrain"] = sum(gaps) / len(gaps) if gaps else None
            if row.get("unlearn_seconds") and retrain.get("unlearn_seconds"):
                row["speedup_over_retrain"] = retrain["unlearn_seconds"] / row["unlearn_seconds"]
        fp32 = ok.get(same(row, quant="fp32", bn_reestimate="none"))
        if fp32 is not None and fp32 is not row:
            # positive = quantization undid forgetting: forget accuracy went up, MIA efficacy went down
            row["recovery_forget_train_accuracy"] = row["forget_train_accuracy"] - fp32["forget_train_accuracy"]
            if _num(row.get("mia_efficacy")) and _num(fp32.get("mia_efficacy")):
                row["recovery_mia_efficacy"] = fp32["mia_efficacy"] - row["mia_efficacy"]


def _num(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def rows_from_table(table: pa.Table, keys: Iterable[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Own columns of the ok rows among `keys`, and comparison outputs by compare key, from a previous table."""
    wanted = set(keys)
    rows, comparisons = {}, {}
    compared = [name for name, _ in COMPARED if name != "compare_key"]
    for row in table.to_pylist():
        if row.get("key") not in wanted or row.get("status") != "ok":
            continue
        rows[row["key"]] = {name: row.get(name) for name in OWN_COLUMNS}
        if row.get("tuned") is None:  # a table written before the column existed
            rows[row["key"]]["tuned"] = row["method"].endswith(TUNED)
        if row.get("compare_key"):
            entry = comparisons.setdefault(row["compare_key"], {"rows": {}, "group": {}})
            entry["rows"][row["key"]] = {name: row.get(name) for name in compared}
    return rows, comparisons


def tuning_row(cell: Cell, meta: dict) -> dict:
    """A finished tuning trial's row of tuning.parquet, from its meta."""
    metrics = meta["metrics"]
    return {**_trial_identity(cell), **{name: metrics.get(name) for name in TUNING_SCHEMA.names if name in metrics},
            "hparams": json.dumps(metrics["hparams"], sort_keys=True), "seconds": meta["interval"][1] -
            meta["interval"][0]}  # fmt: skip


def _trial_identity(cell: Cell) -> dict:
    p, forget = cell.params, ForgetSpec(**cell.params["forget"])
    return {"study": p["study"], "key": cell.key, "model": p["model"], "dataset": p["dataset"],
            "forget_class": forget.forget_class, "forget_fraction": forget.forget_fraction, "method": p["method"],
            "trial": p["trial"], "seeds": ",".join(map(str, p["seeds"])),
            "published": json.dumps(p["published"], sort_keys=True)}  # fmt: skip


def tuning_table(grid: Grid, rows: dict[str, dict], failures: dict[str, str]) -> pa.Table:
    """Every trial of the grid's studies: finished (`rows`), failed (`failures`: key -> error) or pending; `best`
    marks each study's choice (the rule the tuned unlearn cells apply, `objective.best_trial`)."""
    table = []
    for cell in grid.stage("tune"):
        if cell.key in rows:
            table.append({**rows[cell.key], "best": False})
        else:
            failed = cell.key in failures
            table.append({**_trial_identity(cell), "status": "failed" if failed else "pending", "best": False,
                          "error": failures.get(cell.key), "objective": WORST if failed else None})  # fmt: skip
    for study in {row["study"] for row in table}:
        chosen = best_trial({row["trial"]: row for row in table if row["study"] == study})
        if chosen is not None:
            next(row for row in table if (row["study"], row["trial"]) == (study, chosen))["best"] = True
    table.sort(key=lambda row: (row["study"], row["trial"]))
    return pa.Table.from_pylist([{name: _clean(row.get(name)) for name in TUNING_SCHEMA.names} for row in table],
                                schema=TUNING_SCHEMA)  # fmt: skip


def run_info(config, grid: Grid, counts: dict, started: float, finished: float) -> dict:
    """The run's identity, stored in the table's metadata (`cvmf-ray report` reads it from the table alone)."""
    import importlib.metadata as md

    versions = {}
    for package in ("cvmf-ray", "torch", "torchvision", "torchao", "ray", "scikit-learn", "pyarrow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return {
        "grid": config.model_dump(mode="json", exclude={"address"}) if config is not None else None,
        "recipes": _recipes(config) if config is not None else None,
        "grid_digest": grid.digest,
        "counts": {stage: dict(c) for stage, c in counts.items()},
        "versions": versions,
        "hardware": {"cpu": cpu_name(), "cpus": os.cpu_count(), "gpus": _gpu_names()},
        "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(finished).isoformat(timespec="seconds"),
        "wall_seconds": finished - started,
    }


def _recipes(config) -> dict[str, dict]:
    """The recipe each dataset trained with, by the rule its train cells were made with (`recipe_for`): the
    grid's `train` block alone is the built-in recipe, before each dataset's own changes and `--epochs`."""
    return {dataset: config.recipe_for(dataset).model_dump(mode="json") for dataset in config.datasets}


def _gpu_names() -> list[str]:
    """This machine's NVIDIA GPUs that CUDA_VISIBLE_DEVICES leaves visible, as nvidia-smi names them; none without
    it. nvidia-smi rather than torch: the driver does not import torch (cvmf_ray/lazy.py)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return []
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", *([f"--id={visible}"] if visible else [])]
    try:
        query = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [name.strip() for name in query.stdout.splitlines() if name.strip()] if query.returncode == 0 else []


def cpu_name() -> str:
    """The CPU's model name, for a run's metadata and the benchmarks' machine lines."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
