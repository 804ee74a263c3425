"""ℓ1-sparse (Jia et al., NeurIPS'23 "Model Sparsity Can Simplify Machine Unlearning"): fine-tuning with an
ℓ1 penalty on all weights whose strength decays linearly to 0, α·(1 − epoch/epochs)·‖θ‖₁.

OPTML Unlearn-Sparse/Saliency `FT_l1` adds the penalty to FT on the retain set (lr 0.01 × 10 epochs in
the README); Scissorhands' scripts for that code use α = 1e-4. The FT part follows `finetune` here
(SGD momentum 0.9, wd 5e-4, cosine), batch 16 for the same reason: on `digits` larger batches are too few
steps to forget.
"""

from dataclasses import dataclass

from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Positive
from cvmf_ray.methods.finetune import fine_tune


@dataclass
class L1SparseParams:
    epochs: Count = 5
    lr: Positive = 0.1  # peak, cosine-annealed to 0 per step
    batch_size: Count = 16
    alpha: float = 1e-4  # initial ℓ1 weight, decayed linearly to 0 over the epochs


@register_method("l1_sparse", L1SparseParams)
def l1_sparse(model, data: UnlearnData, params: L1SparseParams):
    weights = list(model.parameters())

    def penalty(epoch: int):
        return params.alpha * (1 - epoch / params.epochs) * sum(w.abs().sum() for w in weights)

    return fine_tune(model, data, params, penalty)
