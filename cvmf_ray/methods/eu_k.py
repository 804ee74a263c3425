"""EU-k, exact unlearning of the last k layers (Goel et al., arXiv 2201.06640): re-initialise the model's last
block, then train it alone on the retain set, so nothing the forget set taught the block survives.

As `meghdadk/SCRUB`, `small_scale_unlearning.ipynb`: the block's weights and biases go back to an
initialisation (here each layer's own `reset_parameters()`; the notebook copies those of the initial model) while
BatchNorm's running statistics stay the original's, then CF-k's training (cvmf_ray/methods/cf_k.py: eval mode,
plain SGD, weight decay 0, the block only). Only the block's parameters change; every buffer stays the original's.

Defaults: CF-k's, 10 epochs, lr 0.01 (the notebook's `euk_lr`), batch 256, as DeepUnlearn's
`exact_unlearning_k.py`; the notebook trains EU-k for the original's whole schedule (`training_epochs`).

On `digits` (cvmf_ray/datasets/digits.py): batch 8, as CF-k there. At batch 256 the re-initialised block gets 50
steps and the model keeps 85% retain-train accuracy; at batch 8 (1,520 steps) 99.8%, the class forgotten.
"""

from __future__ import annotations

from cvmf_ray.errors import CellError
from cvmf_ray.lazy import torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods.cf_k import LastBlockParams, last_block, train_last_block


def reinitialise(model, block: list[torch.nn.Parameter]) -> None:
    """`reset_parameters()` of every layer whose own parameters all lie in `block`; buffers put back after."""
    ids = {id(p) for p in block}
    buffers = [b.clone() for b in model.buffers()]
    for name, layer in model.named_modules():
        own = list(layer.parameters(recurse=False))
        if own and all(id(p) in ids for p in own):
            reset = getattr(layer, "reset_parameters", None) or getattr(layer, "_reset_parameters", None)
            if reset is None:
                raise CellError(f"eu_k cannot re-initialise {name!r}: {type(layer).__name__} has no reset_parameters()")
            reset()
    with torch.no_grad():
        for b, kept in zip(model.buffers(), buffers, strict=True):
            b.copy_(kept)


@register_method("eu_k", LastBlockParams, trains_bn=False, needs_last_block=True)
def eu_k(model, data: UnlearnData, params: LastBlockParams):
    block = last_block(model, data, "eu_k")
    reinitialise(model, block)
    return train_last_block(model, data, params, block)
