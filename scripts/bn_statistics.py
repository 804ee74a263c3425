"""Where shallow forgetting lives: swap BatchNorm running statistics between an unlearnt model and its original.

    python scripts/bn_statistics.py results/shallow-forgetting [--method gradient_ascent]

For each fp32 row of the method, on the forget set's training images: the unlearnt model's accuracy, and the
same model with the original's BatchNorm running statistics put back (every learnt parameter, BatchNorm's
affine included, stays unlearnt). If forgetting vanishes with the statistics put back, the method forgot
through the statistics, which no weight quantizer touches (docs/studies.md: shallow forgetting).
"""

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
from safetensors.torch import load_file

from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.models import create_model
from cvmf_ray.stages.evaluate import predict


def forget_accuracy(row: dict, state: dict, data, mask) -> float:
    spec = DATASETS.get(row["dataset"])
    model = create_model(row["model"], spec.in_channels, spec.num_classes)
    model.load_state_dict(state)
    logits = predict(model.eval(), data.train_x[mask], data.mean, data.std)
    return (logits.argmax(1) == data.train_y[mask]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--method", default="gradient_ascent")
    parser.add_argument("--data-root", default="~/.cache/cvmf-ray/data")
    args = parser.parse_args()
    run = Path(args.run_dir)
    rows = [r for r in pq.read_table(run / "results.parquet").to_pylist()
            if r["method"] == args.method and r["quant"] == "fp32" and r["status"] == "ok"]  # fmt: skip
    for row in rows:
        data = DATASETS.get(row["dataset"]).load_data(args.data_root)
        forget = ForgetSpec("class", row["forget_class"]) if row["forget_class"] is not None else (
            ForgetSpec("fraction", row["forget_fraction"]))  # fmt: skip
        mask = forget_mask(forget, data.train_y, row["seed"])
        unlearnt_dir = run / "artifacts" / row["parent_key"]
        original_key = json.loads((unlearnt_dir / "meta.json").read_text())["parent"]
        unlearnt = load_file(unlearnt_dir / "model.safetensors")
        original = load_file(run / "artifacts" / original_key / "model.safetensors")
        statistics = {k: v for k, v in original.items() if "running_" in k or "num_batches" in k}
        as_is = forget_accuracy(row, unlearnt, data, mask)
        put_back = forget_accuracy(row, {**unlearnt, **statistics}, data, mask)
        print(f"{row['model']}/{row['dataset']} seed {row['seed']}, {forget}, {args.method}: forget-train accuracy "
              f"{as_is:.3f}; with the original's BatchNorm statistics {put_back:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
