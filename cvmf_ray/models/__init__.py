"""Model registry. `create_model("resnet18", in_channels=1, num_classes=10)` builds any registered model.

Every entry takes `(in_channels, num_classes)` and returns a freshly initialised `nn.Module` for small
images (8×8 to 32×32). Adding a model is one decorated function in a file of this package, or a function of
your own named by dotted path (`--models mypkg.mymod:my_cnn`; importable on every Ray worker).
"""

from __future__ import annotations

import importlib
import pkgutil

from cvmf_ray.lazy import nn
from cvmf_ray.registry import Registry

MODELS: Registry = Registry("model", plugins=True)


def create_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
