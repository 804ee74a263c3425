"""Boundary Expanding (Chen et al., CVPR'23 "Boundary Unlearning"): grow a shadow class, move the forget set
into it, then prune it.

The last linear layer gets one extra output (a fresh row; the old rows are copied); the whole network is
trained with cross-entropy pushing every forget sample to the shadow class; pruning the shadow row leaves
those samples on whichever real class is next. Official code defaults: 10 epochs over the forget set,
SGD lr 1e-5, momentum 0.9, no weight decay (ported as OPTML Unlearn-Saliency `boundary_ex.py`).

Defaults are the official ones (batch 32: the code does not fix it). Measured on `digits` (small_cnn,
class 0, seeds 0-3): at lr 1e-5 the weights barely move in 50 steps, and what forgetting there is
(forget-train accuracy 7-16%, retain-train ≥ 97%) comes from BatchNorm's running statistics drifting to
the forget class, since the reference trains in train mode on forget-only batches. A larger lr lets the
shadow class do the work but costs retain accuracy (lr 3e-3: 88% retain-train on seed 1) while forgetting
no more (10-14%), so the published value stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F, nn, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, NonNegative, Positive, epoch_seed, sgd, step


@dataclass
class BoundaryExpandingParams:
    epochs: Count = 10
    lr: Positive = 1e-5
    batch_size: Count = 32
    weight_decay: NonNegative = 0.0  # the official code's
    # searched: only the common lr, weight_decay, epochs, batch_size (cvmf_ray/search_space.py)


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the classifier: the last `nn.Linear` in the model."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, attr, getattr(parent, attr)


def _widened(layer: nn.Linear) -> nn.Linear:
    """`layer` with one more output row (freshly initialised) appended."""
    wide = nn.Linear(layer.in_features, layer.out_features + 1, bias=layer.bias is not None)
    wide.to(layer.weight.device)
    with torch.no_grad():
        wide.weight[:-1] = layer.weight
        if layer.bias is not None:
            wide.bias[:-1] = layer.bias
    return wide


@register_method("boundary_expanding", BoundaryExpandingParams)
def boundary_expanding(model, data: UnlearnData, params: BoundaryExpandingParams):
    parent, attr, layer = _last_linear(model)
    wide = _widened(layer)
    setattr(parent, attr, wide)
    optimizer = sgd(model, params.lr, weight_decay=params.weight_decay)
    forget = data.loader("forget", params.batch_size)
    shadow = layer.out_features
    for epoch in data.epochs(params.epochs):
        for x, y in forget.epoch(epoch_seed(data.seed, epoch)):
            step(optimizer, F.cross_entropy(model(x), torch.full_like(y, shadow)))
    with torch.no_grad():  # prune the shadow class: the original layer takes the trained rows back
        layer.weight.copy_(wide.weight[:-1])
        if layer.bias is not None:
            layer.bias.copy_(wide.bias[:-1])
    setattr(parent, attr, layer)
    return model
