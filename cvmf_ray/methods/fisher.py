"""Fisher forgetting (Golatkar et al., CVPR 2020, "Eternal Sunshine of the Spotless Net"): no training; Gaussian
noise scaled by the inverse diagonal Fisher of the retain set, so the weights the retain set does not pin down
move most.

As `AdityaGolatkar/SelectiveForgetting`, `Forgetting.ipynb` (`hessian`, `get_mean_var`): in eval mode, the
Fisher F = mean over retain samples of Σ_y p(y|x)·(∇ log p(y|x))², one sample at a time (here vmapped per
sample); var = α·clamp(1/(F + 1e-8), max 1e3) (max 1e2 for the classifier), averaged over a weight's input
dimension, ×10 for the classifier and every 1-D parameter; θ ← θ + √var·N(0, 1). Class forgetting also zeroes
the forgotten class's classifier row (mean 0, var 1e-4 before the ×10). The classifier is the model's last
`nn.Linear`; a class is forgotten when no retain sample has it. Parameters only: buffers stay the original's.

Defaults: α 1e-6, the notebook's (SalUn's `fisher.py` `fisher_new` is the same; its `fisher`, noise √(α/F)
clamped at 1e-3 with α 0.2, is another method). On `digits` they forget the class (forget-train 0.0,
retain-train 0.987 on the grid's original).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.errors import CellError
from cvmf_ray.lazy import F, nn, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Positive

CHUNK_BYTES = 2**28  # per-sample gradients held at once (samples × gradient size): at most 256 MiB


@dataclass
class FisherParams:
    alpha: Positive = 1e-6  # noise scale: var = alpha / Fisher, clamped


# two decades either side of the published 1e-6, not DeepUnlearn's U[0, 1] (its α is a noise σ): here α scales a
# variance clamped at 1e3 (×10 for the classifier), so at 1e-4 the noise's std reaches 1
SEARCH_SPACE = {"alpha": {"loguniform": [1e-8, 1e-4]}}


def samples_per_chunk(floats_per_sample: int) -> int:
    """How many samples' gradients fit CHUNK_BYTES (at least one): the batch of a per-sample pass."""
    return max(1, CHUNK_BYTES // (4 * floats_per_sample))


def functional(model):
    """(detached parameters by name, f(parameters, one image) -> its logits): the model for torch.func."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def logits(weights: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, (weights, buffers), (x[None],))[0]

    return params, logits


def fisher_diagonal(model, data: UnlearnData) -> dict[str, torch.Tensor]:
    """Golatkar's per-sample Fisher over the retain set: E_x Σ_y p(y|x)·(∇θ log p(y|x))², by parameter name."""
    params, logits = functional(model)

    def log_probs(weights: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.log_softmax(logits(weights, x), 0)
        return out, out

    jacobian = torch.func.vmap(torch.func.jacrev(log_probs, has_aux=True), in_dims=(None, 0))
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    chunk = samples_per_chunk(data.num_classes * sum(p.numel() for p in params.values()))
    for x, _ in data.loader("retain", chunk, augment=False).epoch(data.seed, shuffle=False):
        grads, log_p = jacobian(params, x)  # {name: [samples, classes, *shape]}, [samples, classes]
        for name, g in grads.items():
            total[name] += torch.einsum("sc,sc...->...", log_p.exp(), g.pow(2))
    return {name: t / len(data.retain_y) for name, t in total.items()}


def classifier(model, num_classes: int) -> list[str]:
    """The parameter names of the model's last nn.Linear, which must have one output per class."""
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    if not linear or linear[0][1].out_features != num_classes:
        raise CellError(f"fisher needs the model's last nn.Linear to be its classifier ({num_classes} outputs)")
    name, module = linear[0]
    return [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]


def forgotten_classes(data: UnlearnData) -> torch.Tensor:
    """The classes of the forget set that no retain sample has: the forgotten class, or none (random forgetting)."""
    forget = torch.unique(data.forget_y)
    return forget[~torch.isin(forget, data.retain_y)]


def noise_variance(p: torch.Tensor, fisher: torch.Tensor, alpha: float, head: bool) -> torch.Tensor:
    """Golatkar's `get_mean_var` variance before the ×10 (the caller sets the forgotten rows)."""
    var = alpha * (1 / (fisher + 1e-8)).clamp(max=1e2 if head else 1e3)
    return var.mean(dim=1, keepdim=True).expand_as(p).clone() if p.ndim > 1 else var


@register_method("fisher", FisherParams, trains_bn=False, search_space=SEARCH_SPACE)
def fisher(model, data: UnlearnData, params: FisherParams):
    model.eval()
    head = classifier(model, data.num_classes)
    forgotten = forgotten_classes(data)
    for _ in data.epochs(1):  # one pass over the retain set
        fisher_of = fisher_diagonal(model, data)
    generator = torch.Generator(data.device).manual_seed(data.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            var = noise_variance(p, fisher_of[name], params.alpha, name in head)
            if name in head:
                p[forgotten], var[forgotten] = 0, 1e-4
            if name in head or p.ndim == 1:
                var *= 10
            p.add_(var.sqrt() * torch.randn(p.shape, generator=generator, device=p.device))
    return model
