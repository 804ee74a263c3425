"""A three-block CNN: the cheap default, fast enough for full grids on a 2-core CPU."""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    # One ReLU module per call site: PT2E quantization cannot annotate a module used twice.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_model("small_cnn", last_block=("7.", "8.", "12."))  # the third conv block + the classifier
def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        *_block(in_channels, 32),
        *_block(32, 64),
        nn.MaxPool2d(2),
        *_block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )
