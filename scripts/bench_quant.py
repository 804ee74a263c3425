"""Fidelity and size of every quantization mode on real Fashion-MNIST (CPU): small_cnn, optionally resnet18.

    PYTHONPATH=. .venv/bin/python scripts/bench_quant.py [--threads 1] [--seeds 0,1] [--models small_cnn,resnet18]

For each model and seed: trains on the 60,000 training images (the Debian package's files:
scripts/_real_data.py; `--cache DIR` keeps the weights for the next run), then per mode runs the quantize
stage (calibrated on 512 class-balanced retain-train images, class 0 forgotten, as the grid does), a round
trip through safetensors bytes and `restore` (as the runner does), and reports on the 10,000 test images:
accuracy and its change against fp32 in points, top-1 agreement with fp32, KL(fp32 ‖ mode), `model_bytes`,
quantize and restore seconds. The targets: `int8`, `int8_weight`, `fp8_e4m3` within 1 point and ≥ 98%
agreement, `int4_weight` within 3 points. `int8` evaluates as compiled x86 int8 kernels (what `evaluate`
runs on this CPU); the extra row `int8 eager` is the same graph's quantize/dequantize ops in eager mode.
Speed is scripts/bench_eval.py's business. Runs against older checkouts too (`PYTHONPATH=<old checkout>`, the
same `--cache`): a before/after comparison on the same trained models.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from _real_data import fashion_mnist

from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import normalize
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.stages import quantize, train
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.quantize import calibration_images

MODES = ("fp32", "fp16", "bf16", "int8", "int8_weight", "int4_weight", "fp8_e4m3", "fp8_e5m2")  # contract order
EPOCHS = {"small_cnn": 3, "resnet18": 1}


def trained_model(arch: str, data, seed: int, cache: Path | None):
    path = cache / f"{arch}_fashionmnist_e{EPOCHS[arch]}_s{seed}.pt" if cache else None
    torch.manual_seed(seed)
    model = create_model(arch, 1, 10)
    if path and path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval(), f"loaded from {path}"
    model, info = train(model, data, TrainRecipe(epochs=EPOCHS[arch]), seed=seed)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model, f"trained {EPOCHS[arch]} epoch(s) in {info['train_seconds']:.0f} s"


def row(name, logits, reference, data, model_bytes, fp32_bytes, quant_s, restore_s) -> str:
    accuracy = (logits.argmax(1) == data.test_y).float().mean().item()
    change = 100 * (accuracy - (reference.argmax(1) == data.test_y).float().mean().item())
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    kl = F.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="batchmean").item()
    return (f"{name:<12} {accuracy:>8.2%} {change:>+6.2f} {agreement:>7.2%} {kl:>8.1e} {model_bytes:>10,} "
            f"{model_bytes / fp32_bytes:>7.1%} {quant_s:>7.2f} {restore_s:>9.2f}")  # fmt: skip


def bench(arch: str, seed: int, data, calibration, cache: Path | None) -> None:
    model, how = trained_model(arch, data, seed, cache)
    print(f"\n{arch}, seed {seed}: {how}")
    print(f"{'mode':<12} {'test acc':>8} {'Δ pt':>6} {'agree':>7} {'KL':>8} {'bytes':>10} {'vs fp32':>7} "
          f"{'quant s':>7} {'restore s':>9}")  # fmt: skip
    reference = predict(model, data.test_x, data.mean, data.std, "cpu", 64)
    fp32_bytes = QUANT_MODES.get("fp32").model_bytes(model)
    for mode in MODES:
        qmodel, metrics = quantize(model, mode, calibration)
        impl = QUANT_MODES.get(mode)
        state = safetensors.torch.load(safetensors.torch.save(impl.state_dict(qmodel)))
        started = time.perf_counter()
        restored = impl.restore(create_model(arch, 1, 10).eval(), state)
        restore_seconds = time.perf_counter() - started
        logits = predict(restored, data.test_x, data.mean, data.std, "cpu", 64)
        if not torch.equal(logits, predict(qmodel, data.test_x, data.mean, data.std, "cpu", 64)):
            raise SystemExit(f"{arch} {mode}: the restored model differs from the quantized one")
        size = metrics["model_bytes"]
        print(row(mode, logits, reference, data, size, fp32_bytes, metrics["quantize_seconds"], restore_seconds))
        if mode == "int8":  # the same graph, eager: quantize/dequantize ops around fp32 convolutions
            images = normalize(data.test_x, data.mean, data.std)
            with torch.inference_mode():
                eager = torch.cat([restored.graph_module(x) for x in images.split(256)])
            print(row("int8 eager", eager, reference, data, size, fp32_bytes, 0, 0))
            differ = eager.argmax(1) != logits.argmax(1)
            top2 = eager.topk(2, dim=1).values
            margin = (top2[:, 0] - top2[:, 1])[differ].max().item() if differ.any() else 0.0
            print(f"{'':<12} compiled and eager int8 differ on {int(differ.sum())} of {len(logits):,} test predictions"
                  f" (largest eager top-2 logit margin among them: {margin:.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--models", default="small_cnn", help=f"comma-separated, of {', '.join(EPOCHS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--cache", type=Path, help="folder to keep trained weights in and reuse them from")
    parser.add_argument("--data-root", help="folder with FashionMNIST/raw/ (default: unpack the Debian package's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # inductor's internal copy-construct warning
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"torch {torch.__version__}, {platform.python_implementation()} {platform.python_version()}; "
          f"CPU: {cpu}, {args.threads} threads; load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    data = fashion_mnist(args.data_root)
    calibration = calibration_images(data, ForgetSpec("class", 0), seed=0, size=512)
    for arch in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            bench(arch, seed, data, calibration, args.cache)


if __name__ == "__main__":
    main()
