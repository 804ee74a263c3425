"""Conv/linear layers that keep their weight on a low-precision grid, shared by the weight-only and fp8 modes.

Each weight is stored as codes on the grid plus one fp32 scale per output channel (symmetric,
`scale = amax / grid.qmax`), and dequantized on the fly; with `quantize_inputs`, the layer's input is also
quantized onto the grid with one static, calibrated per-tensor scale. Everything else (BatchNorm, residual
adds, pooling) stays fp32. Per-output-channel scales make BatchNorm folding unnecessary: folding multiplies
each output channel by a constant, which its scale absorbs, so the codes come out the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.errors import CellError
from cvmf_ray.quant import QuantMode, run_calibration

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class IntGrid:
    """Symmetric integers in [-qmax, qmax]; 4-bit codes are packed two per byte."""

    def __init__(self, bits: int) -> None:
        self.bits, self.qmax = bits, float(2 ** (bits - 1) - 1)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        codes = torch.round(v).clamp(-self.qmax, self.qmax).to(torch.int8)
        return pack_int4(codes) if self.bits == 4 else codes

    def decode(self, codes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        values = unpack_int4(codes, shape.numel()) if self.bits == 4 else codes
        return values.float().reshape(shape)


class FloatGrid:
    """A float8 format: saturating round-to-nearest-even casts, exactly what an fp8 kernel's inputs see."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.qmax = dtype, float(torch.finfo(dtype).max)
        self.bits = torch.finfo(dtype).bits

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        return v.clamp(-self.qmax, self.qmax).to(self.dtype)  # clamp first: e4m3fn has no inf, overflow is NaN

    def decode(self, codes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return codes.float().reshape(shape)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] -> uint8, two per byte (low nibble first), padded to an even count."""
    nibbles = (codes.flatten().to(torch.int16) + 8).to(torch.uint8)
    nibbles = F.pad(nibbles, (0, nibbles.numel() % 2))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=1).flatten()[:count]
    return nibbles.to(torch.int8) - 8


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear whose weight lives as grid codes + per-output-channel fp32 scales."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, grid: IntGrid | FloatGrid, quantize_inputs: bool) -> None:
        super().__init__()
        self.layer, self.grid = layer, grid
        weight = layer.weight.detach().float()
        self.weight_shape = weight.shape
        amax = weight.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
        scale = (amax / grid.qmax).view(-1, *([1] * (weight.dim() - 1)))
        self.register_buffer("qweight", grid.encode(weight / scale))
        self.register_buffer("weight_scale", scale)
        # set from calibration (or loaded by restore); None = activations stay fp32
        self.register_buffer("input_scale", torch.ones(()) if quantize_inputs else None)
        del layer.weight  # the grid copy is the only one kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = self.grid.decode(self.grid.encode(x / self.input_scale), x.shape) * self.input_scale
        weight = self.grid.decode(self.qweight, self.weight_shape) * self.weight_scale
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


def wrap_layers(model: nn.Module, wrap: Callable[[str, nn.Module], nn.Module], prefix: str = "") -> int:
    """Replace every Conv2d/Linear (recursively, in place) by `wrap(qualified_name, layer)`; return how many."""
    count = 0
    for name, child in model.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, QUANTIZABLE):
            setattr(model, name, wrap(qualified, child))
            count += 1
        else:
            count += wrap_layers(child, wrap, f"{qualified}.")
    return count


def input_amax(model: nn.Module, calibration: torch.Tensor) -> dict[str, float]:
    """max |input| of every Conv2d/Linear over the calibration images, observed on the fp32 model."""
    amax: dict[str, float] = {}

    def observe(name: str):
        def hook(_module, args):
            amax[name] = max(amax.get(name, 0.0), float(args[0].abs().max()))

        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    try:
        run_calibration(model, calibration)
    finally:
        for handle in handles:
            handle.remove()
    return amax


class GridMode(QuantMode):
    """A mode built on `QuantizedLayer`: every Conv2d/Linear gets `grid` weights (and, optionally, inputs)."""

    def __init__(self, name: str, grid: IntGrid | FloatGrid, quantize_inputs: bool) -> None:
        self.name, self.grid, self.quantize_inputs = name, grid, quantize_inputs
        self.weight_bits = grid.bits

    def quantize(self, model, calibration):
        return self.build(model, input_amax(model, calibration) if self.quantize_inputs else None)

    def restore(self, model, state):
        qmodel = self.build(model)
        qmodel.load_state_dict(state)
        return qmodel

    def build(self, model: nn.Module, amax: dict[str, float] | None = None) -> nn.Module:
        """Wrap the layers of `model` in place; `amax` (calibrated input ranges) sets the input scales."""

        def wrap(name: str, layer: nn.Module) -> QuantizedLayer:
            qlayer = QuantizedLayer(layer, self.grid, self.quantize_inputs)
            if amax is not None:
                qlayer.input_scale.fill_(max(amax.get(name, 0.0), 1e-12) / self.grid.qmax)
            return qlayer

        if not wrap_layers(model, wrap):
            raise CellError(f"{self.name} quantizes Conv2d and Linear weights, and this model has neither")
        return model
