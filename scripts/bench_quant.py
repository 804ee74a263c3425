"""Fidelity, size and speed of every quantization mode on digits, for small_cnn and resnet18 (CPU).

    .venv/bin/python scripts/bench_quant.py [--threads 2]

Trains each model once, then per mode: the quantize stage (calibrated on 512 retain-train images, class 0
forgotten, as the grid does), a round trip through safetensors bytes and `restore` (as the runner does),
and the restored model's test accuracy, top-1 agreement and KL(fp32 ‖ mode) against fp32, `model_bytes`,
quantize and restore seconds, and the median latency of one forward over the 450 test images. `int8` runs
as quantize/dequantize ops around fp32 convs in eager mode (what evaluation uses); the extra row
`int8 inductor` is the same graph compiled by torch.compile into x86 int8 kernels.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch._inductor.config
import torch.nn.functional as F

from cvmf_ray.config import TrainRecipe
from cvmf_ray.datasets import DATASETS
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.stages import quantize, train
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.quantize import calibration_images

MODES = ("fp32", "fp16", "bf16", "int8", "int8_weight", "int4_weight", "fp8_e4m3", "fp8_e5m2")  # contract order
RECIPES = {
    "small_cnn": TrainRecipe(epochs=10, batch_size=64, lr=0.05),
    "resnet18": TrainRecipe(epochs=5, batch_size=128, lr=0.02),
}


def latency_ms(model, data, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(model, data.test_x, data.mean, data.std, "cpu", len(data.test_x))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def row(name, logits, reference, data, model_bytes, fp32_bytes, quant_s, restore_s, latency) -> str:
    accuracy = (logits.argmax(1) == data.test_y).float().mean().item()
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    kl = F.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="batchmean").item()
    return (f"{name:<14} {accuracy:>8.2%} {agreement:>7.2%} {kl:>8.1e} {model_bytes:>10,} "
            f"{model_bytes / fp32_bytes:>7.1%} {quant_s:>7.2f} {restore_s:>9.2f} {latency:>10.1f}")  # fmt: skip


def bench(arch: str, data, calibration) -> None:
    torch.manual_seed(0)
    model, info = train(create_model(arch, 1, 10), data, RECIPES[arch], seed=0)
    recipe = RECIPES[arch]
    print(f"\n{arch}: trained {recipe.epochs} epochs (batch {recipe.batch_size}, lr {recipe.lr}) "
          f"in {info['train_seconds']:.1f} s")  # fmt: skip
    print(f"{'mode':<14} {'test acc':>8} {'agree':>7} {'KL':>8} {'bytes':>10} {'vs fp32':>7} "
          f"{'quant s':>7} {'restore s':>9} {'ms/450 img':>10}")  # fmt: skip
    reference = predict(model, data.test_x, data.mean, data.std, "cpu", 1024)
    fp32_bytes = QUANT_MODES.get("fp32").model_bytes(model)
    for mode in MODES:
        qmodel, metrics = quantize(model, mode, calibration)
        impl = QUANT_MODES.get(mode)
        state = safetensors.torch.load(safetensors.torch.save(impl.state_dict(qmodel)))
        started = time.perf_counter()
        restored = impl.restore(create_model(arch, 1, 10).eval(), state)
        restore_seconds = time.perf_counter() - started
        logits = predict(restored, data.test_x, data.mean, data.std, "cpu", 1024)
        if not torch.equal(logits, predict(qmodel, data.test_x, data.mean, data.std, "cpu", 1024)):
            raise SystemExit(f"{arch} {mode}: the restored model differs from the quantized one")
        size = metrics["model_bytes"]
        print(row(mode, logits, reference, data, size, fp32_bytes, metrics["quantize_seconds"], restore_seconds,
                  latency_ms(restored, data)))  # fmt: skip
        if mode == "int8":  # the same graph lowered to x86 int8 kernels; "quant s" = compile seconds
            started = time.perf_counter()
            compiled = torch.compile(restored.graph_module)
            compiled_logits = predict(compiled, data.test_x, data.mean, data.std, "cpu", 1024)
            compile_seconds = time.perf_counter() - started
            print(row("int8 inductor", compiled_logits, reference, data, size, fp32_bytes, compile_seconds, 0,
                      latency_ms(compiled, data)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # inductor's internal copy-construct warning
    # constant-fold the weights: without it inductor keeps fp32 convolutions (with it: onednn qconv/qlinear)
    torch._inductor.config.freezing = True
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"torch {torch.__version__}, {platform.python_implementation()} {platform.python_version()}; "
          f"CPU: {cpu}, {args.threads} threads; load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    data = DATASETS.get("digits").load_data("unused")
    calibration = calibration_images(data, ForgetSpec("class", 0), seed=0, size=512)
    for arch in RECIPES:
        bench(arch, data, calibration)


if __name__ == "__main__":
    main()
