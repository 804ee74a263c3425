"""fp8 W8A8 (`fp8_e4m3`, `fp8_e5m2`), simulated exactly in PyTorch on any device.

Weights: one scale per output channel (amax / 448 for e4m3, amax / 57344 for e5m2), stored as float8 codes.
Activations: the input of every quantized Conv2d and Linear is cast onto the fp8 grid with one static
per-tensor scale, max-calibrated on the fp32 model over the calibration images (FP8 PTQ as in Shen et al.,
MLSys 2024, and NVIDIA ModelOpt's FP8 config, but with per-channel weights). Casts saturate and round to
nearest even, so the values every conv sees are exactly those an fp8 kernel would multiply (it accumulates
in fp32 too).

Only layers an fp8 GEMM can run are quantized (`_layers.aligned`: input and output channels multiples of 16,
torchao's rule); the image-facing first conv and the classifier stay fp32. On real Fashion-MNIST that is
what brings e4m3 to the targets (scripts/bench_quant.py): the first conv's 9 weights per output channel,
rounded to 3 mantissa bits, alone cost ~2% of test predictions even with fp32 activations, so no choice of
activation scales (percentile, more calibration images: measured, no better) could reach 98% agreement.

No native float8 path: `F.conv2d` rejects float8 tensors on CPU, and torchao 0.18's fp8 conv needs the
`mslk` package and an SM100 GPU (neither available here, none verified); a native fp8 kernel for the final
Linear alone would make CPU and GPU numerics differ for no measurable speed-up.
"""

from cvmf_ray.quant import register_quant
from cvmf_ray.quant._grid_modes import FloatGrid, GridMode

register_quant(GridMode("fp8_e4m3", FloatGrid("float8_e4m3fn"), quantize_inputs=True, aligned_only=True))
register_quant(GridMode("fp8_e5m2", FloatGrid("float8_e5m2"), quantize_inputs=True, aligned_only=True))
