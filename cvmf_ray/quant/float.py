"""fp32 (the reference, no quantization) and the 16-bit float modes (fp16, bf16).

`bf16` runs natively: `model.to(bfloat16)`, whose convolutions oneDNN computes in bf16 on CPUs with
AVX512-BF16/AMX (and cuDNN on GPUs), accumulating in fp32.

`fp16` has no fast CPU convolution (a true fp16 forward runs ~11x slower than fp32 here), so it is
emulated: weights are stored in fp16 (decoded once to fp32), and every op runs in fp32 on fp16 values and
has its output rounded to fp16, which is what a GPU's tensor cores compute (fp16 operands, fp32
accumulation, fp16 results). tests/test_quant.py holds it to a true `model.half()` forward.
"""

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cvmf_ray.quant import QuantMode, register_quant

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


class Fp32(QuantMode):
    name = "fp32"

    def quantize(self, model, calibration):
        return model

    def restore(self, model, state):
        model.load_state_dict(state)
        return model

    def quantize_weight(self, weight):
        return weight.detach().float().clone()


class Fp16(QuantMode):
    """Emulated fp16 (see the module docstring); stored as fp16 tensors, so `model_bytes` is the fp16 size."""

    name = "fp16"
    weight_bits = 16

    def quantize(self, model, calibration):
        return Fp16Emulated(model)

    def restore(self, model, state):
        qmodel = Fp16Emulated(model)
        qmodel.load_state_dict(state)  # fp16 tensors, copied exactly into the fp32 parameters
        return qmodel

    def state_dict(self, qmodel):
        return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in qmodel.state_dict().items()}

    def quantize_weight(self, weight):
        return weight.detach().half().float()


class Bf16(QuantMode):
    name = "bf16"
    weight_bits = 16

    def quantize(self, model, calibration):
        return CastInputs(model, torch.bfloat16)

    def restore(self, model, state):
        qmodel = CastInputs(model, torch.bfloat16)
        qmodel.load_state_dict(state)
        return qmodel

    def quantize_weight(self, weight):
        return weight.detach().to(torch.bfloat16).float()


register_quant(Fp32())
register_quant(Fp16())
register_quant(Bf16())
