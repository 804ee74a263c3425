"""NegGrad+: descend on the retain set and ascend on the forget set in one joint loss.

loss = α·CE(retain batch) − (1 − α)·CE(forget batch), one retain pass per epoch with the forget set
cycled alongside (`zip(r_loader, cycle(f_loader))`, two forward passes per step), as in the
`negative_grad` unlearner of the OPTML-derived code bases and the NegGrad+ baseline of Kurmanji et al.,
NeurIPS'23 (SCRUB); DeepUnlearn (arXiv 2410.01276) finds it the baseline to beat. SGD momentum 0.9,
wd 5e-4.

Defaults: the NegGrad+ baseline of the SCRUB authors' notebooks (meghdadk/SCRUB `MIA_experiments`,
`BadT_experiments`): 5 epochs, lr 0.01, α 0.9999, batch 128 (their retain batch).

On `digits` (cvmf_ray/datasets/digits.py): 3 epochs, batch 64, α 0.95. Kurmanji et al. tune α per
setting; with ~20 steps per epoch there, α 0.97-0.99 leaves 30-80% of the forget class and α 0.9 costs
3 points of retain accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Fraction, NonNegative, Positive, cycled, epoch_seed, sgd, step


@dataclass
class NegGradPlusParams:
    epochs: Count = 5
    lr: Positive = 0.01
    batch_size: Count = 128
    alpha: Fraction = 0.9999  # weight of the retain loss; 1 − alpha weighs the forget ascent
    weight_decay: NonNegative = 5e-4


SEARCH_SPACE = {"alpha": {"uniform": [0.0, 1.0]}}  # DeepUnlearn's NegGrad+ α, U[0, 1]


@register_method("neggrad_plus", NegGradPlusParams, search_space=SEARCH_SPACE)
def neggrad_plus(model, data: UnlearnData, params: NegGradPlusParams):
    optimizer = sgd(model, params.lr, weight_decay=params.weight_decay)
    retain = data.loader("retain", params.batch_size)
    forget = cycled(data.loader("forget", params.batch_size), data.seed, stream=1)
    for epoch in data.epochs(params.epochs):
        for (x, y), (xf, yf) in zip(retain.epoch(epoch_seed(data.seed, epoch)), forget, strict=False):
            loss = params.alpha * F.cross_entropy(model(x), y) - (1 - params.alpha) * F.cross_entropy(model(xf), yf)
            step(optimizer, loss)
    return model
