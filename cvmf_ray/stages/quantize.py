"""Stage 3: quantize an fp32 model into one mode, calibrated on retain-train images.

Calibration images go through exactly the evaluation transform (`data.normalize`) and are class-balanced;
the model is in eval mode throughout, so BatchNorm statistics never move.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from cvmf_ray.data import normalize
from cvmf_ray.datasets import ImageData
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.quant import QUANT_MODES


def quantize(model: nn.Module, mode: str, calibration: torch.Tensor | None) -> tuple[nn.Module, dict]:
    """Return the quantized module and `{"quantize_seconds", "model_bytes"}`; `model` itself is left untouched.

    `quantize_seconds` covers the mode's whole work (for `int8`: export, prepare, calibrate, convert).
    A mode that cannot apply to the model raises `CellError`.
    """
    quant_mode = QUANT_MODES.get(mode)
    model = copy.deepcopy(model).eval()  # modes rewrite the module in place
    started = time.perf_counter()
    with torch.no_grad():
        qmodel = quant_mode.quantize(model, calibration)
    return qmodel, {
        "quantize_seconds": time.perf_counter() - started,
        "model_bytes": quant_mode.model_bytes(qmodel),
    }


def calibration_images(data: ImageData, forget: ForgetSpec, seed: int, size: int) -> torch.Tensor:
    """Up to `size` retain-train images, as equal per class as possible, normalised for evaluation."""
    retain = ~forget_mask(forget, data.train_y, seed)
    x, y = data.train_x[retain], data.train_y[retain]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    # rank of each sample within its class, in shuffled order: taking low ranks first balances classes
    y_shuffled = y[order]
    rank = torch.zeros_like(y_shuffled)
    for label in y_shuffled.unique():
        where = y_shuffled == label
        rank[where] = torch.arange(int(where.sum()))
    chosen = order[torch.argsort(rank, stable=True)[:size]]
    return normalize(x[chosen], data.mean, data.std)
