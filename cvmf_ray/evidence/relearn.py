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
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from cvmf_ray.data import normalize
from cvmf_ray.quant._layers import QUANTIZABLE


class RelearnParams(BaseModel):
    """How relearning is run; a pydantic model so a config section can embed and validate it.

    Defaults, chosen on digits/small_cnn (forget class 0: 133 training images) and bounded on Fashion-MNIST
    (`scripts/bench_evidence.py` measures both):
    - 32 forget images, fixed by `seed`, one full-batch step each time (deterministic: no batch order):
      few enough to be a realistic relearning attack, enough for a gradient that is not one image's.
    - plain SGD, lr 0.001, momentum 0.9: a tenth of the unlearning methods' own fine-tuning rate. At 0.01
      every unlearnt model on digits relearns in one step and only retrain takes longer; at 0.001 they
      spread out (1 to ~10 steps) below retrain's ~30, so the count can rank methods.
    - threshold 0.5 on held-out forget accuracy: the class is predicted for most of its images again,
      far above the 0.1 chance of 10 classes and far above a retrained model's ~0.
    - accuracy checked after every step (exact counts) on at most 128 held-out images (a resolution of
      <1%; a check, forward only, costs about one step); at most 100 steps.
    - BatchNorm in eval mode: its running statistics stay the model's own. Training-mode BatchNorm on a
      batch of one class would normalise with that class's statistics, changing the model's function
      on the check itself, and the count would measure statistics adapting, not knowledge returning.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    subset_size: int = Field(32, ge=1)  # forget images fine-tuned on
    eval_size: int = Field(128, ge=1)  # held-out forget images the accuracy is checked on (at most)
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    threshold: float = Field(0.5, gt=0, le=1)  # held-out forget accuracy that counts as relearnt
    max_steps: int = Field(100, ge=1)  # null steps when the threshold is not reached by then
    check_every: int = Field(1, ge=1)  # steps between accuracy checks
    seed: int = 0


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
