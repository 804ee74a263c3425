"""small_cnn with GroupNorm in place of BatchNorm: the minimal BN-free control (`layers.py` says why 8
groups). Same layers at the same indices as small_cnn, so the same `last_block`."""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model
from cvmf_ray.models.small_cnn import LAST_BLOCK, small_cnn_layers


@register_model("small_cnn_gn", batchnorm=False, last_block=LAST_BLOCK)
def small_cnn_gn(in_channels: int, num_classes: int) -> nn.Module:
    return small_cnn_layers(in_channels, num_classes, "group")
