"""The evidence columns of a run at a glance: per (method, quant), the mean over seeds and forget sets.

    python scripts/evidence_table.py results/quant-recovery [--by-forget]

forget = forget-train accuracy; recov = its change from the fp32 parent; ratio = quant_update_ratio (share of
the unlearning update the quantizer keeps); snap = quant_snapped_back; upd/step = quant_update_to_step;
JS = js_to_retrain_forget_train; PS = privacy_score; F = forgetting_quality (over seeds); relearn =
relearn_steps. docs/user-guide.md: "Evidence that sees shallow forgetting".
"""

import argparse

import pyarrow.parquet as pq

from cvmf_ray.report import aggregate

COLUMNS = {
    "forget_train_accuracy": "forget", "recovery_forget_train_accuracy": "recov", "quant_update_ratio": "ratio",
    "quant_snapped_back": "snap", "quant_update_to_step": "upd/step", "js_to_retrain_forget_train": "JS",
    "privacy_score": "PS", "forgetting_quality": "F", "relearn_steps": "relearn",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--by-forget", action="store_true", help="one block per forget set, not their mean")
    args = parser.parse_args()
    table = pq.read_table(f"{args.run_dir}/results.parquet")
    by = ["forget", "method", "quant"] if args.by_forget else ["method", "quant"]
    stats = aggregate(table, by=by, metrics=[c for c in COLUMNS if c in table.column_names])
    wide = stats.pivot_table(index=by, columns="metric", values="mean", observed=True, sort=False)
    wide = wide.reindex(columns=[c for c in COLUMNS if c in wide.columns]).rename(columns=COLUMNS)
    print(wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))


if __name__ == "__main__":
    main()
