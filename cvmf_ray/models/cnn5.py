"""cnn5 and its GroupNorm twin cnn5_gn: the study CNN for strong originals on a 2-core CPU (issue 21).

small_cnn runs its first two convolutions at full resolution and then averages a 14×14 map: cheap per layer,
but shallow, and it stops near 87% on Fashion-MNIST in a few CPU minutes. cnn5 pools after the first block
and spends the saved compute on depth, two blocks at 14 px and two at 7 px (the VGG pattern: width doubles
as resolution halves): five conv blocks, 0.28M parameters against small_cnn's 0.09M but fewer
multiply-adds per image (22M against 29M on 28×28), and a receptive field that covers the image. The
twins differ only in the norm layer, at the same indices, so they share `last_block`.
"""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model
from cvmf_ray.models.layers import Norm, conv_block

LAST_BLOCK = ("14.", "15.", "19.")  # the fifth conv block + the classifier


def cnn5_layers(in_channels: int, num_classes: int, norm: Norm) -> nn.Module:
    layers = [*conv_block(in_channels, 32, norm), nn.MaxPool2d(2)]  # 28 px
    layers += [*conv_block(32, 64, norm), *conv_block(64, 64, norm), nn.MaxPool2d(2)]  # 14 px
    layers += [*conv_block(64, 128, norm), *conv_block(128, 128, norm)]  # 7 px
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


@register_model("cnn5", last_block=LAST_BLOCK)
def cnn5(in_channels: int, num_classes: int) -> nn.Module:
    return cnn5_layers(in_channels, num_classes, "batch")


@register_model("cnn5_gn", batchnorm=False, last_block=LAST_BLOCK)
def cnn5_gn(in_channels: int, num_classes: int) -> nn.Module:
    return cnn5_layers(in_channels, num_classes, "group")
