"""torchvision ResNets with the small-image stem used for CIFAR/MNIST-sized inputs.

The ImageNet stem (7×7 stride-2 conv + max-pool) shrinks a 32×32 image to 8×8 before the first block;
the CIFAR convention replaces it by a 3×3 stride-1 conv and drops the max-pool.
"""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model


def small_image_resnet(name: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision  # here, not at the top: importing it costs ~1.5 s in every Ray worker

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model("resnet18", last_block=("layer4.", "fc."))
def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    return small_image_resnet("resnet18", in_channels, num_classes)


@register_model("resnet34", last_block=("layer4.", "fc."))
def resnet34(in_channels: int, num_classes: int) -> nn.Module:
    return small_image_resnet("resnet34", in_channels, num_classes)


@register_model("resnet50", last_block=("layer4.", "fc."))
def resnet50(in_channels: int, num_classes: int) -> nn.Module:
    return small_image_resnet("resnet50", in_channels, num_classes)
