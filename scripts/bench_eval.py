"""Cost of one evaluate cell per quant mode on full Fashion-MNIST (small_cnn), next to one fp32 inference pass
over its 70,000 distinct images, the floor a cell is held to.

    PYTHONPATH=. .venv/bin/python scripts/bench_eval.py [--threads 1] [--modes fp32,int8] [--data-root DIR]
    PYTHONPATH=. .venv/bin/python scripts/bench_eval.py --no-passes --retain-images 10000   # bounded cells too
    PYTHONPATH=<checkout of an older commit> .venv/bin/python scripts/bench_eval.py    # "before"

Trains small_cnn on the real data (the Debian package's files: scripts/_real_data.py), quantizes it into each
mode as the grid does (512 class-balanced retain-train images, class 0 forgotten), restores it from
safetensors bytes as an evaluate cell does, and times `evaluate`: wall time and this process's CPU time (the
machine is shared: CPU time is the steadier number; inductor's compile workers are not in it). The fp32
passes infer the 70,000 images with the old settings (NCHW, batches of 1024), the best eager settings
(channels_last, batches of 64) and inductor-compiled (freezing, channels_last, batches of 64, compile time
included). For int8, a second row runs the same graph eagerly (quantize/dequantize ops around fp32
convolutions: what runs on a GPU, or where compiling fails). Also runs against the code before issue 12,
whose `evaluate(model, splits, mean, std)` returns the metrics only. With `--retain-images N`, each mode's cell is
also timed as a bounded evaluation (`eval_retain_images: N`: the forget and test sets whole, N retain-train
images), beside how far its retain-train accuracy and MIA efficacy land from the full cell's.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch._inductor.config
from _real_data import fashion_mnist

import cvmf_ray
from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import normalize
from cvmf_ray.forget import ForgetSpec, forget_mask, retain_sample, split_data
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.stages import evaluate, quantize, train
from cvmf_ray.stages.quantize import calibration_images

MODES = ("fp32", "fp16", "bf16", "int8", "int8_weight", "int4_weight", "fp8_e4m3", "fp8_e5m2")  # contract order
FORGET = ForgetSpec("class", 0)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def fp32_pass(model, images, data, batch_size: int, channels_last: bool, compiled: bool = False) -> None:
    """Logits of every image, as a plain loop: the settings under test and nothing else."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=layout)
    forward = torch.compile(model, dynamic=False) if compiled else model
    with torch.inference_mode(), torch._inductor.config.patch(freezing=True):
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size], data.mean, data.std).contiguous(memory_format=layout)
            if compiled and len(x) < batch_size:  # one shape, one compile
                x = torch.cat([x, x.new_zeros(batch_size - len(x), *x.shape[1:])]).contiguous(memory_format=layout)
            forward(x)


def run_evaluate(model, data, seed: int = 0, retain_images: int | None = None) -> dict:
    """This checkout's evaluate, on the grid's five splits (bounded to `retain_images` retain-train images when
    given); the old signature took the splits themselves."""
    if "splits" in inspect.signature(evaluate).parameters:
        return evaluate(model, split_data(data, FORGET, seed), data.mean, data.std)
    train_forget = forget_mask(FORGET, data.train_y, seed)
    test_forget = data.test_y == FORGET.forget_class
    inferred = retain_sample(train_forget, test_forget, retain_images, seed) if retain_images else None
    return evaluate(model, data, train_forget, test_forget, inferred=inferred)[0]


def print_bounded(model, data, retain_images: int, full: dict, wall: float, cpu: float) -> None:
    """The same cell bounded to `retain_images` retain-train images, against the full cell just timed."""
    bounded, b_wall, b_cpu = timed(lambda: run_evaluate(model, data, retain_images=retain_images))
    moved = {name: bounded[name] - full[name] for name in ("retain_train_accuracy", "mia_efficacy")}
    print(f"{'  bounded':<12} {'':>10} {'':>9} {b_wall:>11.1f} {b_cpu:>10.1f} {bounded['test_accuracy']:>8.2%}  "
          f"{b_wall / wall:.2f}x, {b_cpu / cpu:.2f}x the full cell; retain-train accuracy "
          f"{moved['retain_train_accuracy']:+.4f}, MIA efficacy {moved['mia_efficacy']:+.4f}", flush=True)  # fmt: skip


def machine(threads: int) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    code = Path(list(cvmf_ray.__path__)[0]).parent
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return (
        f"torch {torch.__version__}, CPython {platform.python_version()}; CPU: {cpu}, {os.cpu_count()} cores, "
        f"{threads} torch thread(s); load average at start {os.getloadavg()[0]:.1f}\n"
        f"code: checkout at {commit.stdout.strip() or '? (not a git checkout)'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a cell uses 1)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the evaluated model")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated quant modes")
    parser.add_argument("--passes", action=argparse.BooleanOptionalAction, default=True, help="time the fp32 passes")
    parser.add_argument("--data-root", help="folder with FashionMNIST/raw/ (default: unpack the Debian package's)")
    parser.add_argument("--retain-images", type=int, help="also time each cell bounded to this many retain images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # inductor's internal copy-construct warning
    print(machine(args.threads))
    data = fashion_mnist(args.data_root)
    images = torch.cat([data.train_x, data.test_x])
    torch.manual_seed(0)
    model, info = train(create_model("small_cnn", 1, 10), data, TrainRecipe(epochs=args.epochs), seed=0)
    print(f"small_cnn trained {args.epochs} epoch(s) on {len(data.train_x):,} images in {info['train_seconds']:.0f} s")

    if args.passes:
        print(f"\none fp32 inference pass over the {len(images):,} distinct images (train + test):")
        for name, settings in {
            "NCHW, batch 1024 (before)": (1024, False, False),
            "channels_last, batch 64": (64, True, False),
            "compiled, channels_last, batch 64": (64, True, True),
        }.items():
            _, wall, cpu = timed(lambda s=settings: fp32_pass(model, images, data, *s))
            print(f"  {name:<36} wall {wall:7.1f} s   cpu {cpu:7.1f} s")

    calibration = calibration_images(data, FORGET, seed=0, size=512)
    print(f"\n{'mode':<12} {'quantize s':>10} {'restore s':>9} {'eval wall s':>11} {'eval cpu s':>10} "
          f"{'test acc':>8}  vs fp32 cell (wall, cpu)")  # fmt: skip
    fp32_cell = None
    for mode in args.modes.split(","):
        qmodel, metrics = quantize(model, mode, calibration)
        impl = QUANT_MODES.get(mode)
        state = safetensors.torch.load(safetensors.torch.save(impl.state_dict(qmodel)))
        started = time.perf_counter()
        restored = impl.restore(create_model("small_cnn", 1, 10).eval(), state).eval()
        restore_s = time.perf_counter() - started
        variants = {mode: restored}
        if hasattr(restored, "inference_forward"):  # int8: also its graph run eagerly, as on a GPU
            eager = impl.restore(create_model("small_cnn", 1, 10).eval(), state).eval()
            eager.inference_forward = lambda batch, images, eager=eager: eager
            variants[f"{mode} eager"] = eager
        for name, variant in variants.items():
            result, wall, cpu = timed(lambda v=variant: run_evaluate(v, data))
            fp32_cell = (wall, cpu) if name == "fp32" else fp32_cell
            ratio = f"{wall / fp32_cell[0]:.2f}x, {cpu / fp32_cell[1]:.2f}x" if fp32_cell else "(no fp32 cell yet)"
            print(f"{name:<12} {metrics['quantize_seconds']:>10.2f} {restore_s:>9.2f} {wall:>11.1f} {cpu:>10.1f} "
                  f"{result['test_accuracy']:>8.2%}  {ratio}", flush=True)  # fmt: skip
            if args.retain_images and name == mode:
                print_bounded(variant, data, args.retain_images, result, wall, cpu)


if __name__ == "__main__":
    main()
