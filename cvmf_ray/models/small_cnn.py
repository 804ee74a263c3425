"""A three-block CNN: the cheap default, fast enough for full grids on a 2-core CPU."""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model
from cvmf_ray.models.layers import Norm, conv_block

LAST_BLOCK = ("7.", "8.", "12.")  # the third conv block + the classifier


def small_cnn_layers(in_channels: int, num_classes: int, norm: Norm) -> nn.Module:
    return nn.Sequential(
        *conv_block(in_channels, 32, norm),
        *conv_block(32, 64, norm),
        nn.MaxPool2d(2),
        *conv_block(64, 128, norm),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


@register_model("small_cnn", last_block=LAST_BLOCK)
def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    return small_cnn_layers(in_channels, num_classes, "batch")
