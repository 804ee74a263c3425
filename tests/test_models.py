"""Every registered model builds for small 1- and 3-channel images and keeps their resolution early on."""

import pytest
import torch
from torch import nn

from cvmf_ray.models import MODELS, create_model

CONTRACT_MODELS = {"small_cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v2"}


def test_contract_models_are_registered():
    assert set(MODELS.names()) >= CONTRACT_MODELS


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_small_image_stem(name, in_channels, size):
    model = create_model(name, in_channels=in_channels, num_classes=7).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    widths: list[int] = []
    for conv in convs:
        conv.register_forward_hook(lambda module, inputs, output: widths.append(output.shape[-1]))
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))

    assert logits.shape == (2, 7)
    stem = convs[0]
    assert (stem.in_channels, stem.kernel_size, stem.stride) == (in_channels, (3, 3), (1, 1))
    assert widths[0] == size  # the stem keeps full resolution
    # ImageNet stems downsample 32x (a 32x32 image ends at 1x1); small-image models stop at 8x
    assert min(widths) >= size // 8  # (a kept max-pool or stride-2 stem would end at 2x2)
