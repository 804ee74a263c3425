"""Quantization-mode registry. A mode turns an fp32 model (eval mode) plus calibration images into a
runnable quantized module, saves it as plain tensors (safetensors, never pickle) and rebuilds it from them:

    qmodel = mode.quantize(model, calibration)            # quantize stage
    state = mode.state_dict(qmodel)                       # -> model.safetensors
    qmodel = mode.restore(create_model(...).eval(), state)  # evaluate stage, another process

`mode.quantize_weight(w)` is the fp32 value a Conv2d/Linear weight `w` takes on the mode's grid: what the
mode actually computes with. A quantized module may define `inference_forward(batch, images)`, a faster
forward with the same numerics for `images` images (int8: compiled x86 int8 kernels, where compiling pays);
`inference_forward(model, batch, images)` picks it up.

Calibration images are always normalised with the dataset's evaluation transform: the pipeline this
project replaces lost ~11 points in int8/fp8 by skipping that normalisation.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from cvmf_ray.lazy import nn, torch
from cvmf_ray.registry import Registry

CALIBRATION_BATCH = 256  # images per calibration forward: bounds memory for large models and images


class QuantMode:
    """Base class: override `quantize` and `restore`; `state_dict`/`model_bytes` default to the module's.

    A mode that cannot apply to a model raises `CellError` saying why; it never returns the fp32 model.
    """

    name: str = ""
    weight_bits: int = 32  # bits per stored weight (the report's x-axis: 32, 16, 8, 4)

    def quantize(self, model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
        raise NotImplementedError

    def restore(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Rebuild the quantized module from `state`, given a freshly built fp32 model of the same architecture."""
        raise NotImplementedError

    def quantize_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The fp32 value a Conv2d/Linear `weight` takes in this mode: its grid value."""
        raise NotImplementedError

    def state_dict(self, qmodel: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in qmodel.state_dict().items()}

    def model_bytes(self, qmodel: nn.Module) -> int:
        return tensor_bytes(self.state_dict(qmodel))


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Real storage size: every tensor a model keeps, at its stored dtype (int4: packed two per byte)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def run_calibration(model: nn.Module, calibration: torch.Tensor) -> None:
    """Forward the (already normalised) calibration images through `model` in eval mode, in batches."""
    with torch.no_grad():
        for batch in calibration.split(CALIBRATION_BATCH):
            model(batch)


def inference_forward(model: nn.Module, batch: torch.Tensor, images: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fastest forward of `model` with its numerics over `images` images, in batches shaped like `batch`
    (or smaller)."""
    return model.inference_forward(batch, images) if hasattr(model, "inference_forward") else model


QUANT_MODES: Registry[QuantMode] = Registry("quant mode")


def register_quant(mode: QuantMode) -> QuantMode:
    return QUANT_MODES.register(mode.name)(mode)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):  # _layers (torch) and _grid_modes are imported by the modes that use them
        importlib.import_module(f"{__name__}.{_module.name}")
