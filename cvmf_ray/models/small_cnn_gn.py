"""small_cnn with GroupNorm in place of BatchNorm: the minimal BN-free control.

Same layers at the same indices as small_cnn (so the same `last_block`), one change: GroupNorm normalises
each image by itself, so the model keeps no running statistics for an unlearning method to move or a
deployment pipeline to re-estimate (../shared/reference/where-forgetting-lives.md §5).

8 groups (Wu & He, Group Normalization, arXiv 1803.08494): their ablation found GN insensitive to the group
count over a wide range, with its two ends, 1 group (LayerNorm) and one channel per group (InstanceNorm), the
weaker. 8 divides every width here (32, 64, 128) and leaves each group at least 4 channels, so the 32-channel
first block stays far from InstanceNorm; their default of 32 groups would make it InstanceNorm.
"""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model

GROUPS = 8


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    # One ReLU module per call site: PT2E quantization cannot annotate a module used twice.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(GROUPS, c_out), nn.ReLU()]


@register_model("small_cnn_gn", batchnorm=False, last_block=("7.", "8.", "12."))  # as small_cnn's
def small_cnn_gn(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        *_block(in_channels, 32),
        *_block(32, 64),
        nn.MaxPool2d(2),
        *_block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )
