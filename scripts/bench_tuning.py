"""What one tuning trial costs on real Fashion-MNIST (small_cnn, forget class 6): its unlearning against its
bounded evaluation (the probe of the unlearnt model on at most `tune.samples` retain, forget and validation
images), through the trial cell itself (`cvmf_ray.cells.execute_cell`), as a trial process runs it: one thread.

    python scripts/bench_tuning.py [--data-root DIR] [--repeat 3]

Gradient ascent at its published values (5 epochs, batch 256) and at the cheapest point of its search space
(1 epoch, batch 64): the ratio the issue bounds is evaluation / unlearning (target <= 0.3). The retrain's probe,
paid once per process and study seed and then cached, is printed apart. The models are freshly initialised: a
trial's cost does not depend on what the weights have learnt (the same images pass through the same layers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default=None, help="a folder with FashionMNIST/raw (default: Debian's files)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch
    from _real_data import fashion_mnist

    import cvmf_ray.cells as cells
    from cvmf_ray.config import load_config
    from cvmf_ray.grid import expand_grid
    from cvmf_ray.models import create_model
    from cvmf_ray.results import cpu_name

    torch.set_num_threads(1)
    data = fashion_mnist(args.data_root)
    cells.load_dataset = lambda name, root: data  # the trial reads the data loaded above
    config = load_config(datasets="fashionmnist", models="small_cnn", methods="original,retrain,gradient_ascent",
                         forget_classes="6", seeds="0,1", tune_methods="gradient_ascent", tune_trials=1,
                         recipe="cpu_study")  # fmt: skip
    trial = expand_grid(config).stage("tune")[0]
    artifacts = {}
    for key in trial.inputs.values():
        torch.manual_seed(len(artifacts))
        artifacts[key] = ({"params": trial.params, "quant": "fp32"}, create_model("small_cnn", 1, 10).state_dict())
    settings = cells.CellSettings(args.data_root or "unused")
    published = trial.params["published"]
    points = {"published values": published, "cheapest point": {**published, "epochs": 1, "batch_size": 64}}
    started = time.perf_counter()
    cells.execute_cell(trial, artifacts.__getitem__, settings, hparams=published)  # warm-up, and the retrain probe
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, 1 torch thread; load average {os.getloadavg()[0]:.1f}")
    print(f"first trial of a process (retrain probe included): {time.perf_counter() - started:.2f} s; "
          f"samples per split <= {trial.params['samples']}")  # fmt: skip
    for name, hparams in points.items():
        runs = [cells.execute_cell(trial, artifacts.__getitem__, settings, hparams=hparams).meta["metrics"]
                for _ in range(args.repeat)]  # fmt: skip
        unlearn = statistics.median(r["unlearn_seconds"] for r in runs)
        evaluate = statistics.median(r["eval_seconds"] for r in runs)
        print(f"gradient_ascent at its {name} {hparams}: unlearning {unlearn:.2f} s, evaluation {evaluate:.2f} s "
              f"(medians of {args.repeat}) = {evaluate / unlearn:.3f} x (target <= 0.3)")  # fmt: skip


if __name__ == "__main__":
    main()
