"""Stage 2: apply one unlearning method to a trained model, given the forget and retain sets."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from cvmf_ray.data import Augment
from cvmf_ray.datasets import ImageData
from cvmf_ray.errors import CellError, Diverged
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.meter import Meter
from cvmf_ray.methods import UnlearnData, resolve_method
from cvmf_ray.stages.reestimate import batchnorm_layers


def unlearn(
    model: nn.Module,
    data: ImageData,
    forget: ForgetSpec,
    method: str,
    hparams: dict,
    *,
    seed: int = 0,
    augment: Augment = Augment(),
    device: str | torch.device = "cpu",
    meter: Meter | None = None,
    frozen_bn: bool = False,
    last_block: tuple[str, ...] = (),
) -> tuple[nn.Module, dict]:
    """Return the unlearnt model (eval mode) and `{"unlearn_seconds"}`.

    `hparams` are the method's resolved parameters (see `Method.resolve_params`); `meter` counts the method's
    epochs and images for the progress line (cvmf_ray/meter.py). `frozen_bn` is the BN-frozen control: every
    BatchNorm normalises with its running statistics and leaves them untouched, whatever mode the method puts
    the model in; its affine parameters still train. `last_block` names the model's last block
    (`ModelInfo.last_block`), for the methods that train it (CF-k, EU-k).
    """
    entry = resolve_method(method)
    if entry.fn is None:
        raise ValueError(f"method {method!r} is served by the train stage, not by unlearn()")
    mask = forget_mask(forget, data.train_y, seed)
    bundle = UnlearnData(
        forget_x=data.train_x[mask].to(device), forget_y=data.train_y[mask].to(device),
        retain_x=data.train_x[~mask].to(device), retain_y=data.train_y[~mask].to(device),
        num_classes=data.num_classes, mean=data.mean, std=data.std,
        augment=augment, device=torch.device(device), seed=seed, meter=meter or Meter(), last_block=last_block,
    )  # fmt: skip
    shapes = _shapes(model)
    torch.manual_seed(seed)
    started = time.perf_counter()
    model.to(device).train()
    with _batchnorm_frozen(model) if frozen_bn else contextlib.nullcontext():
        model = entry.fn(model, bundle, entry.instantiate(hparams))
    if bundle.device.type == "cuda":
        torch.cuda.synchronize(bundle.device)  # kernels run asynchronously: count them before stopping the clock
    seconds = time.perf_counter() - started
    if _shapes(model) != shapes:  # the artifact is restored into a freshly built model of the original's name
        raise CellError(f"{method} changed the model's architecture; it must return the same layers")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise Diverged(f"{method} diverged: the unlearnt weights contain NaN or inf")
    return model.eval(), {"unlearn_seconds": seconds}


@contextlib.contextmanager
def _batchnorm_frozen(model: nn.Module):
    """Eval-mode BatchNorm for the method's whole run: a forward pre-hook on each layer turns its training flag
    off before every call, so a method's own `model.train()` cannot switch it back."""

    def to_eval(layer, args) -> None:
        layer.training = False

    hooks = [layer.register_forward_pre_hook(to_eval) for layer in batchnorm_layers(model)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
