"""UNSIR (Tarun et al., IEEE TNNLS 2023 "Fast Yet Effective Machine Unlearning"): learn error-maximising
noise for each forget class, impair the model on noise + retain samples, then repair on retain samples.

Per forget class c: a batch of noise images (normalised input space, N(0, 1) init) is optimised with Adam
to maximise the model's cross-entropy for label c, loss −CE(model(noise), c) + λ·mean ‖noise‖²; the model
is then trained (Adam) one epoch on `noise_copies` copies of that batch labelled c plus up to
`retain_per_class` retain images per class (impair), and one epoch on those retain images alone (repair).
Defaults from the authors' notebook (vikram2000b/Fast-Machine-Unlearning): noise batch 256, Adam lr 0.1,
5 × 8 noise steps, λ 0.1, 20 copies, 1,000 retain images per class, batch 256, impair lr 0.02, repair
lr 0.01. The noise is learnt with the model in eval mode (the notebook's model happens to be in train mode,
so BatchNorm normalised the noise with its own statistics). For random-sample forgetting, every class in
the forget set gets its own noise.

On `digits` (cvmf_ray/datasets/digits.py): noise batch 32 and batch 32 (a class there has ~135 images: a
256-image noise batch would outnumber it twice over, and one epoch at batch 256 is 5 repair steps), and
Adam lr 0.005 / 0.0025, a quarter of the notebook's (which cost ~5 points of retain accuracy at batch 32).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cvmf_ray.data import normalize
from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, Positive, epoch_seed, step


@dataclass
class UnsirParams:
    epochs: Count = 1  # impair epochs, and as many repair epochs
    batch_size: Count = 256
    impair_lr: Positive = 0.02  # Adam
    repair_lr: Positive = 0.01  # Adam
    noise_batch: Count = 256  # noise images learnt per forget class
    noise_copies: Count = 20  # times each noise batch appears in the impair set
    noise_steps: Count = 40
    noise_lr: Positive = 0.1  # Adam
    noise_l2: Positive = 0.1  # λ on mean ‖noise‖²
    retain_per_class: Count = 1000


# the two Adam learning rates as the common lr, log-uniform [1e-5, 1e-1]; λ DeepUnlearn's float family U[0, 1], less
# the 0 the type refuses; the noise's own optimisation and the set sizes stay
SEARCH_SPACE = {
    "impair_lr": {"loguniform": [1e-5, 1e-1]},
    "repair_lr": {"loguniform": [1e-5, 1e-1]},
    "noise_l2": {"uniform": [0.01, 1.0]},
}


def error_maximising_noise(model, label: int, shape, params: UnsirParams, device) -> torch.Tensor:
    """A batch of inputs on which `model` is as wrong as possible about `label`, with bounded energy."""
    noise = torch.randn(params.noise_batch, *shape, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([noise], lr=params.noise_lr)
    target = torch.full((params.noise_batch,), label, device=device)
    model.eval()
    for _ in range(params.noise_steps):
        energy = noise.square().sum(dim=(1, 2, 3)).mean()
        step(optimizer, -F.cross_entropy(model(noise), target) + params.noise_l2 * energy)
    model.train()
    return noise.detach()


def retain_subset(data: UnlearnData, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` retain images of every class, normalised."""
    keep = torch.cat([torch.nonzero(data.retain_y == c).flatten()[:per_class] for c in data.retain_y.unique()])
    return normalize(data.retain_x[keep], data.mean, data.std), data.retain_y[keep]


def batches(x, y, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over already-normalised tensors (noise cannot go through the uint8 loader)."""
    order = torch.randperm(len(y), generator=torch.Generator(y.device).manual_seed(seed), device=y.device)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def train(model, x, y, lr: float, params: UnsirParams, data: UnlearnData, stream: int, counted: Iterator) -> None:
    """`params.epochs` of Adam on (x, y); `counted` ticks the progress line's epochs across both phases."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch, _ in zip(range(params.epochs), counted, strict=False):  # range first: no tick past its end
        for xb, yb in batches(x, y, params.batch_size, epoch_seed(data.seed, epoch, stream)):
            data.meter.count(len(yb))
            step(optimizer, F.cross_entropy(model(xb), yb))


@register_method("unsir", UnsirParams, search_space=SEARCH_SPACE)
def unsir(model, data: UnlearnData, params: UnsirParams):
    shape = data.forget_x.shape[1:]
    classes = [int(c) for c in data.forget_y.unique()]
    noise = [error_maximising_noise(model, c, shape, params, data.device) for c in classes]
    noise_x = torch.cat([n.repeat(params.noise_copies, 1, 1, 1) for n in noise])
    noise_y = torch.tensor(classes, device=data.device).repeat_interleave(params.noise_batch * params.noise_copies)
    retain_x, retain_y = retain_subset(data, params.retain_per_class)
    counted = data.epochs(2 * params.epochs)  # impair, then repair: one count over both phases
    train(model, torch.cat([noise_x, retain_x]), torch.cat([noise_y, retain_y]), params.impair_lr, params, data, 1,
          counted)  # fmt: skip
    train(model, retain_x, retain_y, params.repair_lr, params, data, 2, counted)
    return model
