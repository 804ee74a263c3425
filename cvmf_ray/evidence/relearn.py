"""Relearn time: fine-tuning steps until forgotten knowledge returns.

Knowledge that was hidden rather than removed (an output suppressed, a feature left intact) comes back after
a few steps on a handful of forget examples; a model that never learnt it has to learn it. From each model,
a copy is fine-tuned on a small fixed subset of the forget set, and the step count is recorded at which its
accuracy on the held-out rest of the forget set first reaches a threshold: examples it was never tuned on,
so the count measures knowledge coming back, not memorisation of the subset. The retrain model's count is
the reference; fewer steps than retrain = the knowledge was still there.

For quantized rows, pass `dequantized_copy(model, quantize_weight)`: the fp32 model whose Conv2d/Linear
weights are the values the mode computes with.

Meaningful for class forgetting. With random-sample forgetting the retrain model classifies the forget set
at test accuracy already (0 steps on digits), so a count above 0 only flags a model that forgot more than
retrain did.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.config import RelearnParams
from cvmf_ray.data import normalize
from cvmf_ray.quant._layers import QUANTIZABLE


def relearn(
    model: nn.Module,
    forget_x: torch.Tensor,
    forget_y: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    params: RelearnParams = RelearnParams(),
    *,
    device: str | torch.device = "cpu",
) -> dict:
    """`{"relearn_steps": steps or None, "relearn_seconds": wall time}` for uint8 forget images `forget_x`.

    `relearn_steps` is 0 when the model is already at the threshold, and None (null) when it does not get
    there within `params.max_steps`. `model` itself is not changed.
    """
    started = time.perf_counter()
    tune_x, tune_y, check_x, check_y = _split(forget_x, forget_y, params, device, mean, std)
    student = copy.deepcopy(model).to(device).eval()  # eval for good: BatchNorm statistics stay the model's
    optimizer = torch.optim.SGD(student.parameters(), lr=params.lr, momentum=params.momentum)
    steps = None
    for step in range(params.max_steps + 1):
        checked = step % params.check_every == 0 or step == params.max_steps
        if checked and _accuracy(student, check_x, check_y) >= params.threshold:
            steps = step
            break
        if step < params.max_steps:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(student(tune_x), tune_y).backward()
            optimizer.step()
    return {"relearn_steps": steps, "relearn_seconds": time.perf_counter() - started}


def dequantized_copy(model: nn.Module, quantize_weight: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """An fp32 copy of `model` whose Conv2d/Linear weights are replaced by `quantize_weight(weight)`."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for module in copied.modules():
            if isinstance(module, QUANTIZABLE):
                module.weight.copy_(quantize_weight(module.weight.detach()))
    return copied


def _split(forget_x, forget_y, params: RelearnParams, device, mean, std):
    """A fixed, seeded split: the tuning subset (at most half the forget set) and the held-out check set."""
    order = torch.randperm(len(forget_y), generator=torch.Generator().manual_seed(params.seed))
    tune_size = min(params.subset_size, len(order) // 2)
    tune, check = order[:tune_size], order[tune_size : tune_size + params.eval_size]

    def prepared(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(forget_x[index].to(device), mean, std), forget_y[index].to(device)

    return *prepared(tune), *prepared(check)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())
