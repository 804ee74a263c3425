"""Stage 4: evaluate one model on the five splits: accuracy, macro precision/recall/F1, loss, and the
membership-inference metrics of `cvmf_ray.privacy`.

Logits are computed once per split in large batches under `inference_mode`; every metric is derived
from them (scikit-learn for the classification metrics and the attacks).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.data import normalize
from cvmf_ray.privacy import privacy_metrics

METRICS = ("accuracy", "precision", "recall", "f1", "loss")


def evaluate(
    model: nn.Module,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> dict:
    """`splits` maps each name of `forget.SPLITS` to (uint8 images, labels). Empty splits give null metrics.

    Returns one flat dict: `{split}_{accuracy,precision,recall,f1,loss}`, the four `mia_*` values and
    `eval_seconds`.
    """
    started = time.perf_counter()
    model.eval()
    outputs = {split: (predict(model, x, mean, std, device, batch_size), y) for split, (x, y) in splits.items()}
    metrics: dict = {}
    for split, (logits, y) in outputs.items():
        metrics.update({f"{split}_{k}": v for k, v in classification_metrics(logits, y).items()})
    metrics.update(privacy_metrics(outputs))
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics


@torch.inference_mode()
def predict(model, x, mean, std, device, batch_size: int) -> torch.Tensor:
    """fp32 logits on the CPU for uint8 images `x`, normalised with the evaluation transform.

    Mean/std go to the device once and the logits come back once: no host-device sync per batch.
    """
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    outputs = [
        model(normalize(x[i : i + batch_size].to(device, non_blocking=True), mean_t, std_t)).float()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict:
    if len(y) == 0:
        return dict.fromkeys(METRICS)
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support  # ~1 s: only where used

    pred = logits.argmax(1).numpy()
    truth = y.numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, pred, labels=np.unique(truth), average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "loss": float(F.cross_entropy(logits, y).item()),
    }
