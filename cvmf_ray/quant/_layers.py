"""The torch modules the quant modes build; the mode modules themselves import no torch (the driver reads them).

Grid layers (the weight-only and fp8 modes, `_grid_modes.GridMode`): each weight is stored as codes on the grid plus
one fp32 scale per output channel (symmetric, `scale = amax / grid.qmax`) and decoded once, when the layer is
built or loaded, into a non-persistent fp32 buffer the forward reads (the same values decoding on every forward
gave). With `quantize_inputs`, the layer's input is also cast onto the grid with one static, calibrated
per-tensor scale. Everything else (BatchNorm, residual adds, pooling) stays fp32. Per-output-channel scales make
BatchNorm folding unnecessary: folding multiplies each output channel by a constant, which its scale absorbs,
so the codes come out the same.

Also the fp16 emulation and bf16 wrapper (float.py) and the converted int8 graph's wrapper (int8.py).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cvmf_ray.errors import first_line
from cvmf_ray.quant import run_calibration

if TYPE_CHECKING:
    from cvmf_ray.quant._grid_modes import Grid

log = logging.getLogger(__name__)

QUANTIZABLE = (nn.Conv2d, nn.Linear)
NO_LAYERS = "quantizes Conv2d and Linear layers, and this model has none"


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


# ---------------------------------------------------------------- fp16 (float.py)

aten = torch.ops.aten
# ops whose output is already an fp16 value when their inputs are: rounding them would only cost time
VALUE_PRESERVING = {aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.max_pool2d, aten.max_pool2d_with_indices}


def round_fp16_(t: torch.Tensor) -> torch.Tensor:
    """Round an fp32 tensor to the nearest fp16 value (round to nearest even, saturating to ±inf) in place."""
    return t.copy_(t.to(torch.float16))


class RoundToFp16(TorchDispatchMode):
    """Rounds every fp32 value an op computes to fp16, as an fp16 forward stores it: the output of an
    out-of-place op, the mutated input of an in-place one (`out += identity`). Views compute nothing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliases = [r.alias_info for r in func._schema.returns]
        if func.overloadpacket in VALUE_PRESERVING or any(a is not None and not a.is_write for a in aliases):
            return out
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                round_fp16_(t)
        return out


class Fp16Emulated(nn.Module):
    """`model` with fp16-valued fp32 weights, run so that every activation is an fp16 value; fp32 logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half().float()  # the fp16 weights, decoded once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with RoundToFp16():
            return self.model(x.to(torch.float16).float())


class CastInputs(nn.Module):
    """Runs `model` in `dtype` and hands fp32 logits back, so evaluation code never sees the dtype."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


# ---------------------------------------------------------------- int8 (int8.py)

# the int8 state's keys besides the graph's tensors: the input shape the graph was exported for (also Int8Model's
# buffer), and the activations' scales and zero points (literals in the graph)
INPUT_SHAPE, ACT_SCALE, ACT_ZERO_POINT = "input_shape", "activation_scale", "activation_zero_point"
# input values (images x pixels x channels) from which compiling pays: compiling takes 0.6-2 s, the eager graph
# ~1.3 s per million values for small_cnn (more for larger models); digits' 1,797 images are 0.1 million,
# Fashion-MNIST's 70,000 are 55 million. A fixed count, not a timing: the path (and its rounding) stays the
# same for the same cell on the same kind of machine.
COMPILE_FROM_VALUES = 1_000_000


class Int8Model(nn.Module):
    """The converted graph plus the input shape it was exported with; inference only.

    `.eval()` is free and `.train()` refuses: the exported graph is specialised to eval mode, while
    torchao's `allow_exported_model_train_eval` re-runs a pattern rewrite on every `.eval()` (~0.5 s).
    """

    def __init__(self, graph: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.graph_module = graph
        self.register_buffer(INPUT_SHAPE, torch.tensor(input_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)

    def inference_forward(self, batch: torch.Tensor, images: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """On an x86 CPU, for `images` images of `batch`'s shape holding at least `COMPILE_FROM_VALUES` values, this
        graph compiled by inductor (with freezing) into oneDNN int8 kernels, for batches no larger than `batch`
        (smaller ones are zero-padded to its shape: one compile per model); otherwise, or if compiling fails (no
        C++ compiler, an inductor error), the eager graph.

        Same weights, activation scales and zero points, integer accumulation: the logits differ from the
        eager graph's only by where the requantization rounds (tests/test_quant.py; on Fashion-MNIST's test set,
        2 of 10,000 predictions differ, scripts/bench_quant.py).
        """
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        if batch.device.type != "cpu" or not x86 or images * batch[0].numel() < COMPILE_FROM_VALUES:
            return self
        compiled = torch.compile(self.graph_module, dynamic=False)
        padded = torch.zeros_like(batch)

        def forward(x: torch.Tensor) -> torch.Tensor:
            padded[: len(x)] = x
            # freezing turns the int8 weights into constants, which is what lets inductor pick oneDNN's
            # qconv/qlinear (without it: fp32 convolutions); set for every call, in case one recompiles
            with torch._inductor.config.patch(freezing=True):
                return compiled(padded)[: len(x)].clone()

        try:
            forward(batch)
        except Exception as err:  # any compile failure: the eager graph computes the same
            log.warning("int8: compiling to x86 int8 kernels failed, running the eager graph: %s", first_line(err))
            return self
        return forward

    def train(self, mode: bool = True) -> Int8Model:
        if mode:
            raise RuntimeError("an int8 model is inference-only: it was exported in eval mode")
        return self
