"""Weight-only integer quantization: symmetric, one scale per output channel, for every conv and linear.

Weights are stored as int8 (the int4 grid packed two values per byte would halve `model_bytes` again;
here int4 values are kept in int8 storage and counted at 4 bits) plus fp32 scales, and dequantized on the
fly: the arithmetic is the integer grid exactly; activations stay fp32.
"""

import torch
from torch import nn

from cvmf_ray.quant import QuantMode, register_quant


class WeightOnlyLayer(nn.Module):
    """A conv or linear whose weight lives as an integer tensor and a per-output-channel scale."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, bits: int) -> None:
        super().__init__()
        self.layer = layer
        qmax = 2 ** (bits - 1) - 1
        weight = layer.weight.detach()
        amax = weight.abs().flatten(1).amax(1).clamp_min(1e-12)
        scale = (amax / qmax).view(-1, *([1] * (weight.dim() - 1)))
        self.register_buffer("qweight", torch.clamp(torch.round(weight / scale), -qmax, qmax).to(torch.int8))
        self.register_buffer("scale", scale.float())
        del layer.weight  # the integer copy is the only one kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.qweight.float() * self.scale
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return nn.functional.linear(x, weight, self.layer.bias)


def replace_layers(model: nn.Module, wrap) -> nn.Module:
    """Replace every Conv2d/Linear child (recursively) by `wrap(child)`."""
    for name, child in model.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(model, name, wrap(child))
        else:
            replace_layers(child, wrap)
    return model


class WeightOnly(QuantMode):
    def __init__(self, name: str, bits: int) -> None:
        self.name, self.bits = name, bits

    def quantize(self, model, calibration):
        return replace_layers(model, lambda layer: WeightOnlyLayer(layer, self.bits))

    def restore(self, model, state):
        qmodel = self.quantize(model, None)
        qmodel.load_state_dict(state)
        return qmodel

    def model_bytes(self, qmodel):
        total = 0
        for name, tensor in self.state_dict(qmodel).items():
            bits = self.bits if name.endswith("qweight") else tensor.element_size() * 8
            total += (tensor.numel() * bits + 7) // 8
        return total


register_quant(WeightOnly("int8_weight", 8))
