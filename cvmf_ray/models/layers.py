"""Layers the CNNs share, so a model and its GroupNorm twin differ in one argument, not in a copied file.

GroupNorm with 8 groups (Wu & He, Group Normalization, arXiv 1803.08494): their ablation found GN insensitive
to the group count over a wide range, with its two ends, 1 group (LayerNorm) and one channel per group
(InstanceNorm), the weaker. 8 divides every width here (32, 64, 128) and leaves each group at least 4
channels, so a 32-channel first block stays far from InstanceNorm; their default of 32 groups would make it
InstanceNorm. GroupNorm normalises each image by itself: the model keeps no running statistics for an
unlearning method to move or a deployment pipeline to re-estimate (../shared/reference/where-forgetting-lives.md
§5).
"""

from __future__ import annotations

from typing import Literal

from cvmf_ray.lazy import nn

GROUPS = 8
Norm = Literal["batch", "group"]


def conv_block(c_in: int, c_out: int, norm: Norm) -> list[nn.Module]:
    """3×3 conv (no bias: the norm's shift replaces it), norm, ReLU. One ReLU module per call site: PT2E
    quantization cannot annotate a module used twice."""
    normalise = nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(GROUPS, c_out)
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), normalise, nn.ReLU()]
