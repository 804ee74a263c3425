"""Training images/s of the on-device path (`stages.train.train`) against the plain DataLoader +
torchvision-transforms fp32 loop (`stages.train.train_reference`): side by side in one run, same model,
batch size, recipe (augmentation of the CIFAR/FashionMNIST recipes: crop pad 4 + flip) and images.

    .venv/bin/python scripts/bench_train.py                                   # CPU: small_cnn, CIFAR-10 shapes
    .venv/bin/python scripts/bench_train.py --device cuda --model resnet18 --workers 8 [--compile]

The on-device path runs channels_last, bf16 autocast where the hardware has native bf16 (CUDA; AVX512-BF16
or AMX CPUs; an extra row then shows it with bf16 off) and torch.compile with --compile; the reference
stays fp32 (pinned memory on CUDA), as the textbook loop is. Images are random uint8 tensors of the
dataset's real shape (no download). Each run trains `--epochs` epochs; the first is warm-up (cuDNN
autotuning, compilation, worker start-up) and images/s is timed over the rest from the per-epoch hook,
which both paths call after a host-device sync. Paths alternate for `--rounds` rounds; the median counts.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from cvmf_ray.config import TrainRecipe
from cvmf_ray.datasets import DATASETS, ImageData
from cvmf_ray.models import create_model
from cvmf_ray.stages.train import native_bf16, train, train_reference


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="cifar10", help="whose image shape and normalisation to use")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, help="training images (default: 50,000 on CUDA, 5,120 on CPU)")
    parser.add_argument("--epochs", type=int, default=2, help="the first one is warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="2,0", help="DataLoader workers of the reference, one run per value")
    parser.add_argument("--compile", action="store_true", help="torch.compile the on-device path's model")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return parser.parse_args()


def random_data(dataset: str, images: int) -> ImageData:
    spec = DATASETS.get(dataset)
    shape = (images, spec.in_channels, spec.image_size, spec.image_size)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    y = torch.randint(0, spec.num_classes, (images,))
    return ImageData(dataset, x, y, x[:0], y[:0], spec.num_classes, spec.mean, spec.std)


def images_per_second(run, model, data: ImageData, recipe: TrainRecipe, **kwargs) -> float:
    stamps: list[float] = []
    run(
        copy.deepcopy(model),
        data,
        recipe,
        0,
        on_epoch=lambda epoch, state: stamps.append(time.perf_counter()),
        **kwargs,
    )
    return len(data.train_y) * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = DATASETS.get(args.dataset)
    cuda = args.device.startswith("cuda")
    data = random_data(args.dataset, args.images or (50_000 if cuda else 5_120))
    augment = {"crop_padding": 4, "flip": True}
    recipe = TrainRecipe(
        epochs=args.epochs, batch_size=args.batch_size, lr=0.1, compile=args.compile, bf16=True, **augment
    )
    torch.manual_seed(0)
    model = create_model(args.model, spec.in_channels, spec.num_classes)
    paths = {"on-device (train)": (train, recipe, {})}
    if native_bf16(torch.device(args.device)):  # separates what the data path gains from what bf16 does
        paths["on-device, bf16 off"] = (train, recipe.model_copy(update={"bf16": False}), {})
    for workers in (int(w) for w in args.workers.split(",")):
        paths[f"DataLoader workers={workers} fp32"] = (train_reference, recipe, {"workers": workers})
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    load_before = os.getloadavg()[0]  # other processes on the machine skew every number: say how busy it was
    for _ in range(args.rounds):
        for name, (run, path_recipe, kwargs) in paths.items():
            speeds[name].append(images_per_second(run, model, data, path_recipe, device=args.device, **kwargs))

    hardware = torch.cuda.get_device_name(args.device) if cuda else cpu_name()
    load = f"load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f}"
    print(f"device {args.device} ({hardware}), {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {load}")
    shape = f"{args.dataset} shape {tuple(data.train_x.shape[1:])}, batch {args.batch_size}"
    epochs = f"{len(data.train_y)} images x {args.epochs} epochs (first = warm-up) x {args.rounds} rounds"
    print(f"torch {torch.__version__}, model {args.model}, {shape}, {epochs}, compile={args.compile}")
    for name, values in speeds.items():
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:28s} {statistics.median(values):10,.0f} img/s   (rounds: {rounds})")
    fast = statistics.median(speeds["on-device (train)"])
    for name in list(paths)[1:]:
        print(f"on-device (train) vs {name}: {fast / statistics.median(speeds[name]):.2f}x")


if __name__ == "__main__":
    main()
