"""Weight-only integer quantization (`int8_weight`, `int4_weight`): symmetric, one scale per output channel;
activations stay fp32.

`int8_weight` quantizes every Conv2d and Linear. `int4_weight` quantizes the layers a 4-bit GEMM kernel
can run (`_layers.aligned`: input and output channels multiples of 16) and leaves the image-facing first
conv and the classifier fp32, the standard low-bit recipe: on real Fashion-MNIST, the first conv alone
(9 weights per output channel on 15 levels) cost up to 8 points, and group-wise scales (32 or 64 inputs
per group) or MSE-optimal clipping without this rule still lost up to 6.6 and 6.5 points
(scripts/bench_quant.py and the BENCHMARKS section on it).

int8 codes are stored as int8, int4 codes packed two per byte, so `model_bytes` is the real storage size.
Pure PyTorch rather than torchao's `IntxWeightOnlyConfig`: on torchao 0.18 that config fails on convs with
one input channel (every digits/MNIST model's first layer), uses one scale per output channel *and kernel
tap* instead of per channel, keeps int4 unpacked in int8, and its tensor subclasses cannot be saved by
safetensors. Its CPU path also dequantizes and runs the fp32 conv, as this one does (once per model here).
"""

from cvmf_ray.quant import register_quant
from cvmf_ray.quant._grid_modes import GridMode, IntGrid

register_quant(GridMode("int8_weight", IntGrid(8), quantize_inputs=False))
register_quant(GridMode("int4_weight", IntGrid(4), quantize_inputs=False, aligned_only=True))
