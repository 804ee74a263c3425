"""Test accuracy and training time of the BN-free models (cnn5_gn, small_cnn_gn, vit_tiny) beside cnn5 on real
Fashion-MNIST, on the CPU, with the study's short recipe.

    PYTHONPATH=. .venv/bin/python scripts/bench_bn_free.py [--config FILE] [--epochs N] [--quant fp32,int8,...]

Each model trains with the fashionmnist recipe `--config` resolves (default configs/fashionmnist-cpu-study.yaml:
the `cpu_study` preset, cvmf_ray/config.py, a short schedule tuned for cnn5; the same recipe for every model,
so the comparison is of architectures) on the 60,000 training images (the Debian package's files:
scripts/_real_data.py), seed 0, and is evaluated on the 10,000 test images. Then each `--quant` mode
(calibrated on 512 class-balanced retain-train images, class 0 forgotten, as the grid does): test accuracy,
its change in points, top-1 agreement with fp32 and `model_bytes`. Prints the machine, the resolved recipe,
and the load average before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from _real_data import fashion_mnist

from cvmf_ray.config import load_config
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.results import cpu_name
from cvmf_ray.stages import quantize, train
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.quantize import calibration_images
from cvmf_ray.stages.train import native_bf16

STUDY = Path(__file__).resolve().parent.parent / "configs" / "fashionmnist-cpu-study.yaml"
SHORT = 20  # epochs: a recipe longer than this is no CPU benchmark (the published one is 200)
MODELS = ("cnn5", "cnn5_gn", "small_cnn_gn", "vit_tiny")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--config", type=Path, default=STUDY, help="whose fashionmnist recipe to train with")
    parser.add_argument("--epochs", type=int, help="override the recipe's length")
    parser.add_argument("--quant", default=",".join(QUANT_MODES.names()), help="modes to apply ('' for none)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--data-root", help="folder with FashionMNIST/raw/ (default: unpack the Debian package's)")
    return parser.parse_args()


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()}), {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}")  # fmt: skip


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def bench_model(name: str, data, recipe, modes: list[str], calibration: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model(name, 1, 10)
    params = sum(p.numel() for p in model.parameters())
    model, info = train(model, data, recipe, seed=0)
    started = time.perf_counter()
    reference = predict(model, data.test_x, data.mean, data.std)
    eval_seconds = time.perf_counter() - started
    print(f"\n{name}: {params:,} parameters, trained {recipe.epochs} epoch(s) in {info['train_seconds']:.0f} s "
          f"(final train loss {info['train_loss']:.3f}), test accuracy {accuracy(reference, data.test_y):.2%} "
          f"(evaluated in {eval_seconds:.1f} s)")  # fmt: skip
    if modes:
        print(f"  {'mode':<12} {'test acc':>8} {'Δ pt':>6} {'agree':>7} {'bytes':>10} {'vs fp32':>7}")
    fp32_bytes = QUANT_MODES.get("fp32").model_bytes(model)
    for mode in modes:
        qmodel, metrics = quantize(model, mode, calibration)
        logits = predict(qmodel, data.test_x, data.mean, data.std)
        change = 100 * (accuracy(logits, data.test_y) - accuracy(reference, data.test_y))
        agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        size = metrics["model_bytes"]
        print(f"  {mode:<12} {accuracy(logits, data.test_y):>8.2%} {change:>+6.2f} {agreement:>7.2%} "
              f"{size:>10,} {size / fp32_bytes:>7.1%}")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # inductor's internal copy-construct warning
    load_before = os.getloadavg()
    recipe = load_config(args.config, epochs=args.epochs).recipe_for("fashionmnist")
    if recipe.epochs > SHORT:
        raise SystemExit(f"{args.config.name} resolves a {recipe.epochs}-epoch recipe: pass --epochs")
    print(f"machine: {machine()}; load average at start {load_before[0]:.2f} (5 min {load_before[1]:.2f})")
    bf16 = "on" if recipe.bf16 and native_bf16(torch.device("cpu")) else "off (no native bf16 here: fp32)"
    print(f"recipe ({args.config.name}, bf16 autocast {bf16}): {recipe!r}")
    data = fashion_mnist(args.data_root)
    calibration = calibration_images(data, ForgetSpec("class", 0), seed=0, size=512)
    modes = [m for m in args.quant.split(",") if m]
    started = time.perf_counter()
    for name in args.models.split(","):
        bench_model(name, data, recipe, modes, calibration)
    load_after = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end {load_after[0]:.2f} "
          f"(5 min {load_after[1]:.2f}, 15 min {load_after[2]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
