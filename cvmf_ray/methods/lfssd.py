"""LFSSD (Foster, Schoepf, Brintrup, arXiv 2402.19308 "Loss-Free Machine Unlearning"): SSD without labels.

SSD's selection and dampening (cvmf_ray/methods/ssd.py) with another importance: the absolute gradient of the
squared l2 norm of the model's output (batch mean), a label-free sensitivity in place of the cross-entropy's
Fisher. In eval mode and on parameters only, as SSD.

Defaults: SSD's, as the paper keeps them: λ 1, α 10, batch 64.

On `digits` (cvmf_ray/datasets/digits.py): α 4 over per-sample importances (batch 1), as SSD and for the same
reason (at batch 64 and α 10 nothing is dampened). On the grid's original it forgets the class (forget-train 0.0,
retain-train 1.0), as do α 3.5-4.5; at batch 64, α 4.5-5.5 forget it for up to 15 points of retain accuracy.
"""

from __future__ import annotations

from cvmf_ray.lazy import torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods.ssd import SEARCH_SPACE, SsdParams, dampen


def output_norm_gradient(model, x: torch.Tensor, _y: torch.Tensor, params: list) -> list[torch.Tensor]:
    """LFSSD's importance of one batch: |∇ mean ‖f(x)‖²|; the labels go unused."""
    loss = model(x).pow(2).sum(1).mean()
    return [g.abs() for g in torch.autograd.grad(loss, params, materialize_grads=True)]


@register_method("lfssd", SsdParams, trains_bn=False, search_space=SEARCH_SPACE)  # SSD's
def lfssd(model, data: UnlearnData, params: SsdParams):
    return dampen(model, data, params, output_norm_gradient)
