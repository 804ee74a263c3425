"""torchvision MobileNetV2 for small images, as in the CIFAR literature (kuangliu/pytorch-cifar, Q-MUL).

ImageNet MobileNetV2 downsamples 32× (a 32×32 image ends at 1×1); here the stem conv and the first
stride-2 block run at stride 1, so the network downsamples 8×, like the small-image ResNets.
"""

from __future__ import annotations

from cvmf_ray.lazy import nn
from cvmf_ray.models import register_model


# the last inverted residual (320 channels), the 1x1 conv to 1280 and the classifier
@register_model("mobilenet_v2", last_block=("features.17.", "features.18.", "classifier."))
def mobilenet_v2(in_channels: int, num_classes: int) -> nn.Module:
    import torchvision  # here, not at the top: importing it costs ~1.5 s in every Ray worker

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.features[2].conv[1][0].stride = (1, 1)  # depthwise conv of the first 24-channel block (stride 2)
    return model
