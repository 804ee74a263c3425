"""Where forgetting lives: forget-train accuracy of every treatment as unlearnt and after each deployment step.

    python scripts/bn_table.py results/where-forgetting-lives
    python scripts/bn_table.py results/where-forgetting-lives --metric test_accuracy
    python scripts/bn_table.py results/where-forgetting-lives --metric recovery_forget_train_accuracy --interval

One row per (model, method and its BatchNorm treatment), one column per deployment (fp32 as unlearnt, then each
quant mode alone, each BatchNorm step alone, each combination), each cell the mean over seeds x forget sets with
its range. Rows, columns and the cells without a number come from the report's own pivot
(`cvmf_ray.report.deployment.grid`); with `--interval` every cell is the report's too (mean ± half-width of the
95% t-interval), and `--metric recovery_forget_train_accuracy --interval` prints report/tables/deployment_steps.md's
table. Rows that do not apply (a BatchNorm step on a model without BatchNorm) read `n/a`; rows whose every seed
failed read `failed` (the row's `error` column says why: `cvmf-ray results RUN --format csv`).
"""

import argparse

import pandas as pd

from cvmf_ray.report.deployment import deployment_steps, grid, step_columns
from cvmf_ray.report.frame import GROUP, to_frame
from cvmf_ray.report.tables import drop_constant


def _range(values: pd.Series) -> str:
    """'0.97 (0.95–0.99)': with two seeds a t-interval spans nearly everything; the range says more."""
    mean = f"{values.mean():.2f}"
    return f"{mean} ({values.min():.2f}–{values.max():.2f})" if len(values) > 1 else mean


def bn_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` as mean (min–max) over the ok rows of each (model, dataset, method, deployment)."""
    ok = frame[frame["status"] == "ok"].dropna(subset=[metric])
    cells = ok.groupby(GROUP, observed=True)[metric].agg(_range)
    return grid(frame, cells, step_columns(frame, reference=not metric.startswith("recovery_"))).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--metric", default="forget_train_accuracy")
    parser.add_argument("--interval", action="store_true", help="mean ± 95%% t-interval, as the report shows")
    args = parser.parse_args()
    from cvmf_ray.driver import read_table  # imports Ray: not needed to build the table (tests import this module)
    from cvmf_ray.store import RunStore

    frame = to_frame(read_table(RunStore(args.run_dir), print))
    table = deployment_steps(frame, metric=args.metric).table() if args.interval else bn_table(frame, args.metric)
    table, same = drop_constant(table, ["dataset"])
    spread = "± half-width of the 95% t-interval" if args.interval else "(min–max)"
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"{args.metric}: mean {spread} over seeds x forget sets" + (f"; {same}" if same else ""))
        print(table.set_index([c for c in ("model", "dataset", "method") if c in table]).to_string())


if __name__ == "__main__":
    main()
