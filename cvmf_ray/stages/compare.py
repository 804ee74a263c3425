"""Stage 5: set each evaluated model beside the retrained gold standard, seed by seed and over all seeds.

A compare cell reads the logits of one (method, quant) group's evaluations at every seed and those of the
retrain model of the same seed, forget set and quant mode (so quantization's own distortion cancels out, as in
`gap_to_retrain`). Per row: the distance in output space (`evidence.outputs`) and the Comparator's privacy
score; per group: the NeurIPS 2023 challenge's forgetting quality over the seeds, for class-wise forgetting
only (a random forget set is drawn from the seed: no example is forgotten by every seed's model). A seed whose
model or retrain did not finish is left out.
"""

from __future__ import annotations

from cvmf_ray.errors import MissingInput
from cvmf_ray.evidence.forgetting_quality import forgetting_quality
from cvmf_ray.evidence.outputs import distance_to_retrain
from cvmf_ray.evidence.privacy_score import privacy_score
from cvmf_ray.forget import ForgetSpec, forget_mask


def compare(cell, data, load) -> dict:
    """{"rows": {evaluation key: per-row columns}, "group": columns shared by the group's rows}."""
    forget = ForgetSpec(**cell.params["forget"])
    rows, forgotten, forgotten_by_retrain = {}, [], []
    for seed in cell.params["seeds"]:
        model_key, retrain_key = cell.inputs[f"model:{seed}"], cell.inputs[f"retrain:{seed}"]
        try:
            model, retrain = load(model_key)[1], load(retrain_key)[1]
        except MissingInput:
            continue
        in_forget = forget_mask(forget, data.train_y, seed)
        ours = {"forget_train": model["train"][in_forget], "test": model["test"]}
        gold = {"forget_train": retrain["train"][in_forget], "test": retrain["test"]}
        rows[model_key] = {**distance_to_retrain(ours, gold),
                           "privacy_score": privacy_score(ours["forget_train"], gold["forget_train"])}  # fmt: skip
        forgotten.append(ours["forget_train"])
        forgotten_by_retrain.append(gold["forget_train"])
    group = forgetting_quality(forgotten, forgotten_by_retrain) if forget.kind == "class" else {}
    return {"rows": rows, "group": group}
