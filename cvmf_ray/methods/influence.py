"""IU, influence unlearning (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning"; Izzo et
al.'s influence removal with a WoodFisher Hessian): one Newton step that undoes the forget set's share of the
training loss, θ ← θ + α·H⁻¹v, no training.

As `OPTML-Group/Unlearn-Saliency`, `Classification/unlearn/Wfisher.py`, in eval mode: v = (n_f / n)·(mean
forget gradient − mean retain gradient) of the cross-entropy (n = n_f + n_r); H⁻¹v by that file's WoodFisher
recursion over N per-sample retain gradients g (k ← v; o ← the first g; then per g: k ← k − (k·g / (N + o·g))·o,
o ← o − (o·g / (N + o·g))·o). The recursion is the code's, which updates along the first sample's gradient
only, not the full Woodbury product. Per-sample gradients are vmapped (torch.func), in chunks of bounded
memory; the N retain samples are a seeded draw. Parameters only: buffers stay the original's.

Defaults: α 0.2 (`Classification/arg_parser.py` `--alpha`), N 1000 (`woodfisher`).

On `digits` (cvmf_ray/datasets/digits.py): α 10. The recursion leaves H⁻¹v close to v, so the step is about
α·v, and the gradients of an original at 100% train accuracy are small: α 0.2 and 2 leave the class at 100%,
α 7 at 41%; α 10 forgets it (retain-train 0.998) and keeps a random 10% forget set's test accuracy at 0.95
(α 12: 0.94).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Positive
from cvmf_ray.methods.fisher import functional, samples_per_chunk
from cvmf_ray.methods.ssd import importance_sum

GRADIENT_BATCH = 256  # SalUn's batch for the mean gradients, whose value does not depend on it (eval mode)


@dataclass
class InfluenceParams:
    alpha: Positive = 0.2  # step size of the Newton step
    samples: Count = 1000  # N: per-sample retain gradients in the WoodFisher recursion


# log-uniform over the published 0.2 and digits' 10, not DeepUnlearn's U[0, 1], which leaves a class at 100% on
# digits (α 2 does too); N stays (a cost, not a coefficient)
SEARCH_SPACE = {"alpha": {"loguniform": [0.01, 100.0]}}


def gradient_sum(model, data: UnlearnData, which: str) -> torch.Tensor:
    """Σ over the `which` set of the per-sample cross-entropy gradients, flattened over all parameters."""
    total, _ = importance_sum(model, data, which, GRADIENT_BATCH, _summed_gradient)
    return torch.cat([t.flatten() for t in total])


def _summed_gradient(model, x, y, params) -> tuple:
    return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params, materialize_grads=True)


def sample_gradients(model, data: UnlearnData, samples: int):
    """The flattened cross-entropy gradients of `samples` retain images drawn with the seed, one at a time."""
    params, logits = functional(model)

    def loss(weights: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(weights, x), y)

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    chunk = samples_per_chunk(sum(p.numel() for p in params.values()))
    seen = 0
    for x, y in data.loader("retain", chunk, augment=False).epoch(data.seed):
        grads = per_sample(params, x[: samples - seen], y[: samples - seen])
        yield from torch.cat([g.flatten(1) for g in grads.values()], 1)
        seen += len(x)
        if seen >= samples:
            return


def woodfisher(model, data: UnlearnData, v: torch.Tensor, samples: int) -> torch.Tensor:
    """H⁻¹v by `Wfisher.py`'s recursion over per-sample retain gradients (N = the samples available)."""
    n = min(samples, len(data.retain_y))
    k, o = v.clone(), None
    for g in sample_gradients(model, data, n):
        if o is None:
            o = g.clone()
            continue
        dot = o @ g
        k -= (k @ g) / (n + dot) * o
        o -= dot / (n + dot) * o
    return k


@register_method("influence", InfluenceParams, trains_bn=False, search_space=SEARCH_SPACE)
def influence(model, data: UnlearnData, params: InfluenceParams):
    model.eval()
    n_forget, n_retain = len(data.forget_y), len(data.retain_y)
    for _ in data.epochs(1):  # one pass over the training set, then N retain samples one at a time
        forget, retain = gradient_sum(model, data, "forget"), gradient_sum(model, data, "retain")
        v = (forget - retain * n_forget / n_retain) / (n_forget + n_retain)
        step = params.alpha * woodfisher(model, data, v, params.samples)
    with torch.no_grad():
        for p, update in zip(model.parameters(), step.split([p.numel() for p in model.parameters()]), strict=True):
            p.add_(update.view_as(p))
    return model
