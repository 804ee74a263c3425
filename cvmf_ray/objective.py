"""The tuning objective: how far a trial's model is from the retrained one (DeepUnlearn's, against the retrain).

Torch-free: the driver marks each study's choice in tuning.parquet with the rule the tuned unlearn cells apply.
The components (stages/tune.py measures them on bounded samples): the gaps in retain, forget and validation
accuracy, each weighted 1/3, and the gap in the loss-MIA AUC of forget-train against validation. Each is at most 1,
so `WORST`, the norm with every component at 1, is what a failed or diverged trial scores.
"""

from __future__ import annotations

import math
import statistics

from cvmf_ray.schema import OBJECTIVE_COMPONENTS, PROBED

WEIGHTS = dict(zip(OBJECTIVE_COMPONENTS, (1 / 3, 1 / 3, 1 / 3, 1.0), strict=True))
WORST = math.sqrt(sum(w * w for w in WEIGHTS.values()))  # every component at its largest, 1


def score(model: dict[str, float], retrain: dict[str, float]) -> dict[str, float | None]:
    """The objective components (|model's value - retrain's| for each of `PROBED`) and their weighted norm; a value
    that is not finite (a diverged model) makes the components None and the objective `WORST`."""
    gaps = {gap: abs(model[probed] - retrain[probed]) for gap, probed in zip(OBJECTIVE_COMPONENTS, PROBED, strict=True)}
    if not all(math.isfinite(v) for v in gaps.values()):
        return {**dict.fromkeys(OBJECTIVE_COMPONENTS), "objective": WORST}
    return {**gaps, "objective": math.sqrt(sum((WEIGHTS[k] * v) ** 2 for k, v in gaps.items()))}


def diverged(scored: dict) -> bool:
    return scored[OBJECTIVE_COMPONENTS[0]] is None


def mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float | None]:
    """A trial over several tuning seeds: each seed scored against its own retrain, then every value averaged; a
    seed that diverged makes the trial diverged (scored `WORST`)."""
    scored = [{**seed, **score(seed, {k: seed[f"retrain_{k}"] for k in PROBED})} for seed in per_seed]
    means = {name: statistics.fmean(seed[name] for seed in scored) for name in per_seed[0]}
    if any(diverged(seed) for seed in scored):
        return {**means, **dict.fromkeys(OBJECTIVE_COMPONENTS), "objective": WORST}
    return {**means, **{name: statistics.fmean(seed[name] for seed in scored) for name in WEIGHTS},
            "objective": statistics.fmean(seed["objective"] for seed in scored)}  # fmt: skip


def best_trial(trials: dict[int, dict]) -> int | None:
    """The chosen trial among `trials` (number -> tuning row or metrics): the lowest objective of those that
    finished without diverging, ties to the earlier trial; None when there is none."""
    eligible = [number for number, trial in trials.items() if trial.get("status") == "ok"]
    return min(eligible, key=lambda number: (trials[number]["objective"], number), default=None)
