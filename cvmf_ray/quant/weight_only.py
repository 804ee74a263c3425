"""Weight-only integer quantization (`int8_weight`, `int4_weight`): symmetric, one scale per output channel,
for every Conv2d and Linear; activations stay fp32.

int8 codes are stored as int8, int4 codes packed two per byte, so `model_bytes` is the real storage size.
Pure PyTorch rather than torchao's `IntxWeightOnlyConfig`: on torchao 0.18 that config fails on convs with
one input channel (every digits/MNIST model's first layer), uses one scale per output channel *and kernel
tap* instead of per channel, keeps int4 unpacked in int8, and its tensor subclasses cannot be saved by
safetensors. Its CPU path also dequantizes and runs the fp32 conv, as this one does.
"""

from cvmf_ray.quant import register_quant
from cvmf_ray.quant._layers import GridMode, IntGrid

register_quant(GridMode("int8_weight", IntGrid(8), quantize_inputs=False))
register_quant(GridMode("int4_weight", IntGrid(4), quantize_inputs=False))
