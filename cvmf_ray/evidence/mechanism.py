"""The mechanism by which quantization can undo unlearning, read from the weights alone (no data).

Unlearning moves the weights θ_o → θ_u. A quantization mode computes with Q(w) in place of every Conv2d and
Linear weight w. When the update is small against the mode's step, Q(θ_u) = Q(θ_o): the quantized unlearnt
model is the quantized original, and what was forgotten comes back. This is what happens to LLMs at 4 bits
(Zhang et al., ICLR'25; QUAIL, arXiv 2601.15538: updates ~1e-5 against steps of 0.05–0.1). BatchNorm
parameters and biases stay fp32 in these modes, so only Conv2d/Linear weights are compared.

The step of a layer is estimated from Q alone, as √12 · rms(Q(θ_o) − θ_o): rounding to a uniform grid of step
s leaves an error uniform on [−s/2, s/2], whose rms is s/√12. With one scale per output channel (the integer
and fp8 grids here) this gives the rms of the channels' steps; for fp16/bf16, whose step grows with |w|, the
rms of the weights' local steps. The estimate is exact in expectation for weights spread over many steps and
needs no knowledge of the grid. It is 0 for fp32 (Q = identity), where update/step is undefined (null).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from cvmf_ray.quant._layers import QUANTIZABLE

QuantizeWeight = Callable[[torch.Tensor], torch.Tensor]


def quantized_weight_names(model: nn.Module) -> list[str]:
    """State-dict names of the weights the quantization modes put on a grid: every Conv2d/Linear weight."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, QUANTIZABLE)]


def quant_update(
    original: Mapping[str, torch.Tensor],
    unlearnt: Mapping[str, torch.Tensor],
    weight_names: Iterable[str],
    quantize_weight: QuantizeWeight,
) -> dict:
    """How much of the update θ_u − θ_o survives the mode's quantizer Q, over the weights in `weight_names`.

    - `quant_update_ratio` = ‖Q(θ_u) − Q(θ_o)‖ / ‖θ_u − θ_o‖ (L2 over all those weights): 0 = Q erased the
      whole update, ≈1 = it survives (exactly 1 for Q = identity); null when θ_u = θ_o.
    - `quant_snapped_back`: the fraction of moved weights (θ_u ≠ θ_o) still on the same grid point: Q(θ_u) within
      half the layer's step of Q(θ_o); null if none moved. Not exact equality: with one absmax scale per output
      channel, an update that moves a channel's largest weight rescales the whole channel, shifting every
      value of it by far less than a step (on digits, gradient ascent at lr 1e-5 kept 99.9% of the int4 codes
      of its moved weights, while exact equality held only for the weights at code 0).
    - `quant_update_per_layer`: {layer: {"update_to_step": rms(θ_u − θ_o) / step, "snapped_back": fraction}}.
    - `quant_update_to_step`: the median over layers of update_to_step (null where no layer has a step).
    """
    update_sq = quantized_update_sq = 0.0
    moved = snapped = 0
    per_layer = {}
    for name in weight_names:
        before, after = original[name].float(), unlearnt[name].float()
        q_before, q_after = quantize_weight(before), quantize_weight(after)
        update = (after - before).double()
        step = layer_step(before, q_before)
        moved_mask = after != before
        same_point = (q_after - q_before).abs() < step / 2
        layer_moved, layer_snapped = int(moved_mask.sum()), int((moved_mask & same_point).sum())
        per_layer[name.removesuffix(".weight")] = {
            "update_to_step": _ratio(_rms(update), step),
            "snapped_back": _ratio(layer_snapped, layer_moved),
        }
        update_sq += float(update.square().sum())
        quantized_update_sq += float((q_after - q_before).double().square().sum())
        moved, snapped = moved + layer_moved, snapped + layer_snapped
    to_step = [layer["update_to_step"] for layer in per_layer.values() if layer["update_to_step"] is not None]
    return {
        "quant_update_ratio": _ratio(math.sqrt(quantized_update_sq), math.sqrt(update_sq)),
        "quant_snapped_back": _ratio(snapped, moved),
        "quant_update_to_step": statistics.median(to_step) if to_step else None,
        "quant_update_per_layer": per_layer,
    }


def layer_step(weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """The layer's quantization step, √12 × the rms rounding error (see the module docstring)."""
    return math.sqrt(12) * _rms((quantized - weight).double())


def _rms(values: torch.Tensor) -> float:
    return float(values.square().mean().sqrt()) if values.numel() else 0.0


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None
