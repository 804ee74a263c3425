"""Where forgetting lives: forget-train accuracy of every treatment as unlearnt and after each deployment step.

    python scripts/bn_table.py results/where-forgetting-lives
    python scripts/bn_table.py results/where-forgetting-lives --metric test_accuracy

One row per (model, method and its BatchNorm treatment), one column per deployment (quant mode + BatchNorm
step), each cell the mean over seeds x forget sets with its range, from the run's results table through the
report's own `aggregate` (so the numbers are those of `cvmf-ray results --aggregate` and `report.html`). Rows that
do not apply (a BatchNorm step on a model without BatchNorm) read `n/a`; rows whose every seed failed read
`failed` (the row's `error` column says why: `cvmf-ray results RUN --format csv`).
"""

import argparse

import pandas as pd

from cvmf_ray.driver import read_table
from cvmf_ray.report.frame import to_frame
from cvmf_ray.store import RunStore

MARKS = {"not_applicable": "n/a", "failed": "failed"}  # status -> what a table cell without a number reads


def bn_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    def cell(group: pd.DataFrame) -> str:
        values = group.loc[group["status"] == "ok", metric]
        if len(values) == 0:  # every row without a number says why: never a silently missing row
            return MARKS.get(group["status"].iloc[0], "-")
        return (
            f"{values.mean():.2f} ({values.min():.2f}–{values.max():.2f})"
            if len(values) > 1
            else f"{values.mean():.2f}"
        )

    cells = frame.groupby(["model", "method", "quant"], observed=True)[["status", metric]].apply(cell)
    return cells.unstack("quant").fillna("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--metric", default="forget_train_accuracy")
    args = parser.parse_args()
    frame = to_frame(read_table(RunStore(args.run_dir), print))
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"{args.metric}: mean (min–max) over seeds x forget sets")
        print(bn_table(frame, args.metric).to_string())


if __name__ == "__main__":
    main()
