"""Model registry. `create_model("resnet18", in_channels=1, num_classes=10)` builds any registered model.

Every entry takes `(in_channels, num_classes)` and returns a freshly initialised `nn.Module` for small
images (8×8 to 32×32). Adding a model is one decorated function in a file of this package, or a function of
your own named by dotted path (`--models mypkg.mymod:my_cnn`; importable on every Ray worker).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from cvmf_ray.lazy import nn
from cvmf_ray.registry import Registry

MODELS: Registry = Registry("model", plugins=True)


@dataclass(frozen=True)
class ModelInfo:
    """What the driver knows of a registered model without building it (no torch): which deployment steps and
    methods apply to it."""

    batchnorm: bool = True  # has BatchNorm layers (BatchNorm re-estimation, the BN-frozen control apply)
    # parameter-name prefixes of its last block, what CF-k fine-tunes and EU-k re-initialises (Goel et al.:
    # ResNet's layer4; here always with the classifier); () when it has none
    last_block: tuple[str, ...] = ()


MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(name: str, *, batchnorm: bool = True, last_block: tuple[str, ...] = ()) -> Callable:
    """`@register_model("name", last_block=(...))`: a model function and what the driver knows of it."""
    MODEL_INFO[name] = ModelInfo(batchnorm, last_block)
    return MODELS.register(name)


def model_info(name: str) -> ModelInfo:
    """A registered model's info. A plug-in (`pkg.mod:fn`) declares nothing, so it gets the defaults: taken to
    have BatchNorm (its cells say if not) and no last block."""
    MODELS.get(name)  # an unknown name is a UsageError
    return MODEL_INFO.get(name, ModelInfo())


def create_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
