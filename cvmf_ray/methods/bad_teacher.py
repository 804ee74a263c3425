"""Bad Teacher (Chundawat et al., AAAI'23 "Can Bad Teaching Induce Forgetting?"): distil from the competent
original on retain samples and from an incompetent, randomly initialised copy on forget samples.

Loss per batch of forget ∪ retain samples: KL(teacher ‖ student) at temperature T, where the teacher is
the incompetent one for forget samples and the frozen original for retain samples (vikram2000b/
bad-teaching-unlearning `UnlearnerLoss`: `F.kl_div` with its default element-wise mean). Adam.

Defaults: the authors' notebook run (`CIFARSuper20_Rocket_Unlearn.ipynb`): 1 epoch, lr 1e-4, on a random
30% of the retain set; batch 256 and T 1 from `blindspot_unlearner`, whose own defaults are 10 epochs at
lr 1e-2.

On `digits` (cvmf_ray/datasets/digits.py): 10 epochs at lr 1e-3. There the notebook's 1e-4 (even over 10
epochs, 20 Adam steps) forgets nothing, and the function's 1e-2 costs 12 points of retain accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmf_ray.lazy import F, torch
from cvmf_ray.methods import UnlearnData, register_method
from cvmf_ray.methods._common import Count, ForgetRetainMix, Fraction, Positive, epoch_seed, frozen_copy, step


@dataclass
class BadTeacherParams:
    epochs: Count = 1
    lr: Positive = 1e-4  # Adam
    batch_size: Count = 256
    temperature: Positive = 1.0
    retain_fraction: Fraction = 0.3  # share of the retain set distilled from the competent teacher


# DeepUnlearn's Bad Teacher T, U[0, 5] less the T → 0 that divides the logits by 0; its float family U[0, 1] for the
# share (Adam: no weight decay to search)
SEARCH_SPACE = {"temperature": {"uniform": [0.1, 5.0]}, "retain_fraction": {"uniform": [0.0, 1.0]}}


def incompetent_copy(model):
    """A frozen copy of `model` with every layer re-initialised (global torch RNG, seeded by the stage)."""
    teacher = frozen_copy(model)
    for module in teacher.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return teacher


@register_method("bad_teacher", BadTeacherParams, search_space=SEARCH_SPACE)
def bad_teacher(model, data: UnlearnData, params: BadTeacherParams):
    good, bad = frozen_copy(model), incompetent_copy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    subset = torch.Generator(data.device).manual_seed(data.seed)
    keep = torch.randperm(len(data.retain_y), generator=subset, device=data.device)
    keep = keep[: max(1, int(params.retain_fraction * len(keep)))]
    mix = ForgetRetainMix(data, data.retain_x[keep], data.retain_y[keep], params.batch_size)
    T = params.temperature
    for epoch in data.epochs(params.epochs):
        for x, _, is_forget in mix.epoch(data.forget_y, epoch_seed(data.seed, epoch)):
            with torch.no_grad():
                target = torch.where(is_forget[:, None], bad(x), good(x))
            kl = F.kl_div(F.log_softmax(model(x) / T, dim=1), F.softmax(target / T, dim=1), reduction="batchmean")
            step(optimizer, kl / data.num_classes)  # = the reference's element-wise mean
    return model
