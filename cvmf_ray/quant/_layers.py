"""Conv/linear layers that keep their weight on a low-precision grid, shared by the weight-only and fp8 modes.

Each weight is stored as codes on the grid plus one fp32 scale per output channel (symmetric,
`scale = amax / grid.qmax`) and decoded once, when the layer is built or loaded, into a non-persistent fp32
buffer the forward reads (the same values decoding on every forward gave). With `quantize_inputs`, the
layer's input is also cast onto the grid with one static, calibrated per-tensor scale. Everything else
(BatchNorm, residual adds, pooling) stays fp32. Per-output-channel scales make BatchNorm folding
unnecessary: folding multiplies each output channel by a constant, which its scale absorbs, so the codes
come out the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.errors import CellError
from cvmf_ray.quant import QuantMode, run_calibration

QUANTIZABLE = (nn.Conv2d, nn.Linear)
NO_LAYERS = "quantizes Conv2d and Linear layers, and this model has none"


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


Grid = IntGrid | FloatGrid


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] -> uint8, two per byte (low nibble first), padded to an even count."""
    nibbles = (codes.flatten().to(torch.int16) + 8).to(torch.uint8)
    nibbles = F.pad(nibbles, (0, nibbles.numel() % 2))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=1).flatten()[:count]
    return nibbles.to(torch.int8) - 8


def encode_weight(weight: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, per-output-channel scales) of a Conv2d/Linear weight: symmetric, scale = amax / qmax."""
    weight = weight.detach().float()
    amax = weight.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = (amax / grid.qmax).view(-1, *[1] * (weight.dim() - 1))
    return grid.encode(weight / scale), scale


def decode_weight(codes: torch.Tensor, scale: torch.Tensor, shape: torch.Size, grid: Grid) -> torch.Tensor:
    """The fp32 weight a layer computes with."""
    return grid.decode(codes, shape) * scale


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear whose weight lives as grid codes + fp32 scales, decoded once into `weight`."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, grid: Grid, quantize_inputs: bool) -> None:
        super().__init__()
        self.layer, self.grid = layer, grid
        self.weight_shape = layer.weight.shape
        codes, scale = encode_weight(layer.weight, grid)
        self.register_buffer("qweight", codes)
        self.register_buffer("weight_scale", scale)
        # set from calibration (or loaded by restore); None = activations stay fp32
        self.register_buffer("input_scale", torch.ones(()) if quantize_inputs else None)
        del layer.weight  # the grid copy is the only one kept
        # decoded once per model: non-persistent, so it moves with .to() but is not stored
        self.register_buffer("weight", self.decoded_weight(), persistent=False)
        self.register_load_state_dict_post_hook(QuantizedLayer.decode)

    def decode(self, _incompatible_keys=None) -> None:
        """Refresh the decoded weight (after the codes and scales were loaded)."""
        with torch.no_grad():
            self.weight.copy_(self.decoded_weight())

    def decoded_weight(self) -> torch.Tensor:
        return decode_weight(self.qweight, self.weight_scale, self.weight_shape, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = self.grid.decode(self.grid.encode(x / self.input_scale), x.shape) * self.input_scale
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, self.weight, self.layer.bias)
        return F.linear(x, self.weight, self.layer.bias)


def aligned(weight: torch.Tensor) -> bool:
    """Whether a low-precision GEMM kernel can run a layer: input and output channels multiples of 16.

    torchao's float8 configs skip every other layer, leaving it in the model's dtype (`_fp8_mm_compat`; for
    convs C_in and C_out % 16), as tensor-core int4/fp8 kernels need aligned dimensions. In this project's
    models these are the image-facing first conv (1 or 3 input channels, 9 or 27 weights per output), the
    classifier (10 or 100 outputs) and MobileNetV2's depthwise convs: the first and last layers that the
    standard low-bit recipes keep at higher precision.
    """
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def wrap_layers(
    model: nn.Module, wrap: Callable[[str, nn.Module], nn.Module], eligible: Callable[[nn.Module], bool], prefix=""
) -> int:
    """Replace every eligible Conv2d/Linear (recursively, in place) by `wrap(qualified_name, layer)`; count them."""
    count = 0
    for name, child in model.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, QUANTIZABLE):
            if eligible(child):
                setattr(model, name, wrap(qualified, child))
                count += 1
        else:
            count += wrap_layers(child, wrap, eligible, f"{qualified}.")
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
    """A mode built on `QuantizedLayer`: every Conv2d/Linear (with `aligned_only`, every `aligned` one) gets
    `grid` weights and, with `quantize_inputs`, grid inputs; the other layers stay fp32."""

    def __init__(self, name: str, grid: Grid, quantize_inputs: bool, aligned_only: bool = False) -> None:
        self.name, self.grid, self.quantize_inputs, self.aligned_only = name, grid, quantize_inputs, aligned_only
        self.weight_bits = grid.bits

    def quantize(self, model, calibration):
        return self.build(model, input_amax(model, calibration) if self.quantize_inputs else None)

    def restore(self, model, state):
        qmodel = self.build(model)
        qmodel.load_state_dict(state)
        return qmodel

    def applies_to(self, weight: torch.Tensor) -> bool:
        return aligned(weight) or not self.aligned_only

    def quantize_weight(self, weight):
        """The weight `QuantizedLayer` decodes for `weight` (the same functions); itself where the mode leaves
        its layer fp32."""
        if not self.applies_to(weight):
            return weight.detach().float().clone()
        return decode_weight(*encode_weight(weight, self.grid), weight.shape, self.grid)

    def build(self, model: nn.Module, amax: dict[str, float] | None = None) -> nn.Module:
        """Wrap the layers of `model` in place; `amax` (calibrated input ranges) sets the input scales."""

        def wrap(name: str, layer: nn.Module) -> QuantizedLayer:
            qlayer = QuantizedLayer(layer, self.grid, self.quantize_inputs)
            if amax is not None:
                qlayer.input_scale.fill_(max(amax.get(name, 0.0), 1e-12) / self.grid.qmax)
            return qlayer

        if not wrap_layers(model, wrap, lambda layer: self.applies_to(layer.weight)):
            rule = " whose input and output channels are multiples of 16" if self.aligned_only else ""
            raise CellError(f"{self.name} {NO_LAYERS}{rule}")
        return model
