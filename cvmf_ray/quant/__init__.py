"""Quantization-mode registry. A mode turns an fp32 model (eval mode) plus calibration images into a
runnable quantized module, saves it as tensors only (safetensors) and rebuilds it from them.

Calibration images are always normalised with the dataset's evaluation transform: the pipeline this
project replaces lost ~11 points in int8/fp8 by skipping that normalisation.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from cvmf_ray.registry import Registry


class QuantMode:
    """Base class: override `quantize` and `restore`; `state_dict`/`model_bytes` default to the module's."""

    name: str = ""
    needs_calibration = False

    def quantize(self, model: nn.Module, calibration: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    def restore(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Rebuild the quantized module from `state`, given a freshly built fp32 model of the same architecture."""
        raise NotImplementedError

    def state_dict(self, qmodel: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in qmodel.state_dict().items()}

    def model_bytes(self, qmodel: nn.Module) -> int:
        """Real storage size: every tensor the quantized model keeps, at its stored dtype."""
        return sum(t.numel() * t.element_size() for t in self.state_dict(qmodel).values())


QUANT_MODES: Registry[QuantMode] = Registry("quant mode")


def register_quant(mode: QuantMode) -> QuantMode:
    return QUANT_MODES.register(mode.name)(mode)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
