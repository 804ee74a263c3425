"""ℓ1-sparse (Jia et al., NeurIPS'23 "Model Sparsity Can Simplify Machine Unlearning"): fine-tuning with an
ℓ1 penalty on all weights whose strength decays linearly to 0, α·(1 − epoch/epochs)·‖θ‖₁.

OPTML Unlearn-Sparse/Saliency `FT_l1` adds the penalty to FT on the retain set. Defaults: lr 0.01 × 10
epochs (the README), batch 256 (OPTML's `arg_parser`), α 1e-4 (Scissorhands' scripts for that code). The
FT loop is `finetune`'s (SGD momentum 0.9, wd 5e-4, cosine).

On `digits` (cvmf_ray/datasets/digits.py): `finetune`'s values there, 5 epochs, lr 0.1, batch 16, for the
same reason: larger batches are too few steps to forget.
"""

from dataclasses import dataclass

from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Finite, NonNegative, Positive
from cvmf_ray.methods.finetune import fine_tune


@dataclass
class L1SparseParams:
    epochs: Count = 10
    lr: Positive = 0.01  # peak, cosine-annealed to 0 per step
    batch_size: Count = 256
    alpha: Finite = 1e-4  # initial ℓ1 weight, decayed linearly to 0 over the epochs
    weight_decay: NonNegative = 5e-4


# two decades either side of the published 1e-4, not DeepUnlearn's U[0, 1]: the penalty sums |θ| over every weight
# (11M in a ResNet-18), so a weight near 1 would swamp the cross-entropy
SEARCH_SPACE = {"alpha": {"loguniform": [1e-6, 1e-2]}}


@register_method("l1_sparse", L1SparseParams, search_space=SEARCH_SPACE)
def l1_sparse(model, data: UnlearnData, params: L1SparseParams):
    weights = list(model.parameters())

    def penalty(epoch: int):
        return params.alpha * (1 - epoch / params.epochs) * sum(w.abs().sum() for w in weights)

    return fine_tune(model, data, params, penalty)
