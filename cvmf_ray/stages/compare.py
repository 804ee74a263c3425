"""Stage 5: set each evaluated model beside the retrained gold standard, seed by seed.

A compare cell reads the logits of one (method, quant) group's evaluations over every seed and of the fp32
retrain evaluations of the same seeds, and returns per-row metrics keyed by evaluation key. A seed whose model
or retrain did not finish is left out.
"""

from __future__ import annotations

import torch

from cvmf_ray.errors import MissingInput
from cvmf_ray.forget import ForgetSpec, forget_mask


def compare(cell, data, load) -> dict:
    forget = ForgetSpec(**cell.params["forget"])
    rows: dict[str, dict] = {}
    for seed in cell.params["seeds"]:
        model_key, retrain_key = cell.inputs[f"model:{seed}"], cell.inputs[f"retrain:{seed}"]
        try:
            model, retrain = load(model_key)[1], load(retrain_key)[1]
        except MissingInput:
            continue
        in_forget = forget_mask(forget, data.train_y, seed)
        rows[model_key] = {
            **{f"{m}_to_retrain_forget_train": v
               for m, v in distances(model["train"][in_forget], retrain["train"][in_forget]).items()},
            **{f"{m}_to_retrain_test": v for m, v in distances(model["test"], retrain["test"]).items()},
        }  # fmt: skip
    return {"rows": rows, "group": {}}


def distances(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean Jensen-Shannon divergence (base 2) and KL(reference ‖ model) between the two softmax outputs."""
    if not len(logits):
        return {"js": None, "kl": None}
    log_p, log_q = torch.log_softmax(logits.double(), 1), torch.log_softmax(reference.double(), 1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    kl = lambda a, b: (a.exp() * (a - b)).sum(1)  # noqa: E731
    js = 0.5 * (kl(log_p, log_m) + kl(log_q, log_m)) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    return {"js": float(js.mean()), "kl": float(kl(log_q, log_p).mean())}
