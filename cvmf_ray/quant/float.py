"""fp32 (the reference, no quantization) and half-precision casts (fp16, bf16)."""

import torch
from torch import nn

from cvmf_ray.quant import QuantMode, register_quant


class CastInputs(nn.Module):
    """Runs `model` in `dtype` and hands fp32 logits back, so evaluation code never sees the dtype."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


class Fp32(QuantMode):
    name = "fp32"

    def quantize(self, model, calibration):
        return model

    def restore(self, model, state):
        model.load_state_dict(state)
        return model


class Cast(QuantMode):
    weight_bits = 16

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def quantize(self, model, calibration):
        return CastInputs(model.to(self.dtype), self.dtype)

    def restore(self, model, state):
        qmodel = CastInputs(model.to(self.dtype), self.dtype)
        qmodel.load_state_dict(state)
        return qmodel


register_quant(Fp32())
register_quant(Cast("fp16", torch.float16))
register_quant(Cast("bf16", torch.bfloat16))
