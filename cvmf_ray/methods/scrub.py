"""SCRUB (Kurmanji et al., NeurIPS'23 "Towards Unbounded Machine Unlearning"): a student, starting as the
original, moves away from the frozen original (teacher) on the forget set and stays with it on the retain set.

Per epoch: while `epoch <= msteps` a max-pass over the forget set (loss −KL(teacher ‖ student)), then a
min-pass over the retain set (loss γ·CE + α·KL(teacher ‖ student)); KL at temperature T, × T²
(meghdadk/SCRUB `scrub.py` + RepDistiller `DistillKL`). SGD momentum 0.9, wd 5e-4.

Defaults: the Machine-Unlearning-Comparator's SCRUB on CIFAR-10 (5 epochs, lr 0.01, batch 128, α 0.5,
γ 1.0, T 2, msteps 100: a max-pass in every epoch). The authors' large-scale notebook uses lr 5e-4,
3 epochs, msteps 2, T 4, α 0.001, γ 0.99, forget batch 32.

On `digits` (cvmf_ray/datasets/digits.py): max-passes in the first two epochs only (msteps 1), as the
paper prescribes (max-steps early, then min-steps to repair): a max-pass in every epoch costs 2 points of
retain accuracy there, and the large-scale notebook's values leave 66% of the forget class.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import (
    Count,
    Finite,
    Index,
    NonNegative,
    Positive,
    distill_kl,
    epoch_seed,
    frozen_copy,
    sgd,
    step,
)


@dataclass
class ScrubParams:
    epochs: Count = 5
    lr: Positive = 0.01
    batch_size: Count = 128  # retain (min) batches
    forget_batch_size: Count = 128  # forget (max) batches
    msteps: Index = 100  # max-passes run while epoch <= msteps
    temperature: Positive = 2.0
    alpha: Finite = 0.5  # KL weight in the min step
    gamma: Finite = 1.0  # cross-entropy weight in the min step
    weight_decay: NonNegative = 5e-4


# DeepUnlearn's SCRUB: α, γ U[0, 1]; T U[0, 5] less the T → 0 that divides the logits by 0; msteps, which it draws
# as its epochs, here 0 (a max-pass in the first epoch only) to 10 (the epochs' cap for a 50-epoch original)
SEARCH_SPACE = {
    "alpha": {"uniform": [0.0, 1.0]},
    "gamma": {"uniform": [0.0, 1.0]},
    "temperature": {"uniform": [0.1, 5.0]},
    "msteps": {"int": [0, 10]},
}


@register_method("scrub", ScrubParams, search_space=SEARCH_SPACE)
def scrub(model, data: UnlearnData, params: ScrubParams):
    teacher = frozen_copy(model)
    optimizer = sgd(model, params.lr, weight_decay=params.weight_decay)
    forget = data.loader("forget", params.forget_batch_size)
    retain = data.loader("retain", params.batch_size)
    T = params.temperature
    for epoch in data.epochs(params.epochs):
        if epoch <= params.msteps:
            for x, _ in forget.epoch(epoch_seed(data.seed, epoch, stream=1)):
                step(optimizer, -distill_kl(model(x), teacher(x), T))
        for x, y in retain.epoch(epoch_seed(data.seed, epoch, stream=2)):
            logits = model(x)
            loss = params.gamma * F.cross_entropy(logits, y) + params.alpha * distill_kl(logits, teacher(x), T)
            step(optimizer, loss)
    return model
