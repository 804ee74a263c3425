"""Weight grids and the modes built on them (int8_weight, int4_weight, fp8_e4m3, fp8_e5m2), importable without
torch: the driver builds every mode to validate a grid. What they build, `QuantizedLayer`, is in `_layers`.
"""

from __future__ import annotations

import functools

from cvmf_ray.errors import CellError
from cvmf_ray.lazy import F, LazyModule, nn, torch
from cvmf_ray.quant import QuantMode

_layers = LazyModule("cvmf_ray.quant._layers")


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

    bits = 8
    FORMATS = ("float8_e4m3fn", "float8_e5m2")

    def __init__(self, dtype_name: str) -> None:
        if dtype_name not in self.FORMATS:
            raise ValueError(f"{dtype_name!r} is not one of the float8 formats {self.FORMATS}")
        self.dtype_name = dtype_name  # a name: the driver builds every mode without importing torch

    @functools.cached_property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @functools.cached_property
    def qmax(self) -> float:
        return float(torch.finfo(self.dtype).max)

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


class GridMode(QuantMode):
    """A mode built on `QuantizedLayer`: every Conv2d/Linear (with `aligned_only`, every `aligned` one) gets
    `grid` weights and, with `quantize_inputs`, grid inputs; the other layers stay fp32."""

    def __init__(self, name: str, grid: Grid, quantize_inputs: bool, aligned_only: bool = False) -> None:
        self.name, self.grid, self.quantize_inputs, self.aligned_only = name, grid, quantize_inputs, aligned_only
        self.weight_bits = grid.bits

    def quantize(self, model, calibration):
        return self.build(model, _layers.input_amax(model, calibration) if self.quantize_inputs else None)

    def restore(self, model, state):
        qmodel = self.build(model)
        qmodel.load_state_dict(state)
        return qmodel

    def applies_to(self, weight: torch.Tensor) -> bool:
        return _layers.aligned(weight) or not self.aligned_only

    def quantize_weight(self, weight):
        """The weight `QuantizedLayer` decodes for `weight` (the same functions); itself where the mode leaves
        its layer fp32."""
        if not self.applies_to(weight):
            return weight.detach().float().clone()
        return _layers.decode_weight(*_layers.encode_weight(weight, self.grid), weight.shape, self.grid)

    def build(self, model: nn.Module, amax: dict[str, float] | None = None) -> nn.Module:
        """Wrap the layers of `model` in place; `amax` (calibrated input ranges) sets the input scales."""

        def wrap(name: str, layer: nn.Module) -> nn.Module:
            qlayer = _layers.QuantizedLayer(layer, self.grid, self.quantize_inputs)
            if amax is not None:
                qlayer.input_scale.fill_(max(amax.get(name, 0.0), 1e-12) / self.grid.qmax)
            return qlayer

        if not _layers.wrap_layers(model, wrap, lambda layer: self.applies_to(layer.weight)):
            rule = " whose input and output channels are multiples of 16" if self.aligned_only else ""
            raise CellError(f"{self.name} {_layers.NO_LAYERS}{rule}")
        return model
