"""fp32 (the reference, no quantization) and the 16-bit float modes (fp16, bf16).

`bf16` runs natively: `model.to(bfloat16)`, whose convolutions oneDNN computes in bf16 on CPUs with
AVX512-BF16/AMX (and cuDNN on GPUs), accumulating in fp32.

`fp16` has no fast CPU convolution (a true fp16 forward runs ~11x slower than fp32 here), so it is
emulated: weights are stored in fp16 (decoded once to fp32), and every op runs in fp32 on fp16 values and
has its output rounded to fp16, which is what a GPU's tensor cores compute (fp16 operands, fp32
accumulation, fp16 results). tests/test_quant.py holds it to a true `model.half()` forward.
"""

from __future__ import annotations

from cvmf_ray.lazy import LazyModule, torch
from cvmf_ray.quant import QuantMode, register_quant

_layers = LazyModule("cvmf_ray.quant._layers")  # Fp16Emulated, CastInputs: torch modules


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
        return _layers.Fp16Emulated(model)

    def restore(self, model, state):
        qmodel = _layers.Fp16Emulated(model)
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
        return _layers.CastInputs(model, torch.bfloat16)

    def restore(self, model, state):
        qmodel = _layers.CastInputs(model, torch.bfloat16)
        qmodel.load_state_dict(state)
        return qmodel

    def quantize_weight(self, weight):
        return weight.detach().to(torch.bfloat16).float()


register_quant(Fp32())
register_quant(Fp16())
register_quant(Bf16())
