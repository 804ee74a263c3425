"""Stage 4: evaluate one model on the five splits: accuracy, macro precision/recall/F1, loss, per-class
accuracy, and the membership-inference metrics of `cvmf_ray.privacy`.

Every distinct image is inferred once (all train images, or a bounded evaluation's forget set and retain sample;
all test images); the five splits are masks over those logits (`test` = `forget_test` ∪ `retain_test`).
Inference runs the way scripts/bench_eval.py measured fastest on CPU: channels_last, batches of 64 (activations
stay in cache), `inference_mode`, and the mode's own faster forward where it has one (int8: compiled x86 int8
kernels where compiling pays).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.data import normalize
from cvmf_ray.datasets import ImageData
from cvmf_ray.evidence.outputs import per_class_accuracy
from cvmf_ray.privacy import privacy_metrics
from cvmf_ray.quant import inference_forward
from cvmf_ray.schema import METRICS

# images per forward: 64 is fastest on CPU (small_cnn and resnet18, 1 thread; scripts/bench_eval.py)
BATCH_SIZE = {"cpu": 64, "cuda": 1024}


def evaluate(
    model: nn.Module,
    data: ImageData,
    train_forget: torch.Tensor,
    test_forget: torch.Tensor,
    *,
    inferred: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metrics of `model` on `data`, the forget sets given as bool masks over its train and test images.

    `inferred` (a mask over the train images, `forget.retain_sample`) bounds the evaluation: only those train
    images are inferred, so `retain_train` and the per-class train accuracy cover its retain sample, while the
    forget set and the test set are always read whole. Default: every image.

    Returns (metrics, logits). metrics: `{split}_{accuracy,precision,recall,f1,loss}` for the five splits
    (null for an empty split: random-sample forgetting has no forget-class test images, so there
    `retain_test` is the whole test set), the `mia_*` values, `train_class_accuracy` and
    `test_class_accuracy` (one float per class, null for a class without images) and `eval_seconds`.
    logits: fp32 on the CPU, `{"train": [N_train, C], "test": [N_test, C]}`, NaN in the rows of train images
    not inferred.
    """
    started = time.perf_counter()
    model.eval()
    train_x = data.train_x if inferred is None else data.train_x[inferred]
    # one pass over all images: one compile for a mode that compiles (int8)
    all_logits = predict(model, torch.cat([train_x, data.test_x]), data.mean, data.std, device)
    logits = {"train": _train_rows(all_logits[: len(train_x)], inferred), "test": all_logits[len(train_x) :].clone()}
    kept = torch.ones_like(train_forget) if inferred is None else inferred
    outputs = split_outputs(logits, data, train_forget, test_forget, kept)
    metrics: dict = {}
    for split, (split_logits, y) in outputs.items():
        metrics.update({f"{split}_{k}": v for k, v in classification_metrics(split_logits, y).items()})
    metrics.update(privacy_metrics(outputs))
    metrics["train_class_accuracy"] = per_class_accuracy(logits["train"][kept], data.train_y[kept], data.num_classes)
    metrics["test_class_accuracy"] = per_class_accuracy(logits["test"], data.test_y, data.num_classes)
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics, logits


def _train_rows(train_logits: torch.Tensor, inferred: torch.Tensor | None) -> torch.Tensor:
    """The inferred train images' logits in place among all train images (NaN rows for the others)."""
    if inferred is None:
        return train_logits.clone()
    rows = torch.full((len(inferred), train_logits.shape[1]), float("nan"))
    rows[inferred] = train_logits
    return rows


def split_outputs(
    logits: dict[str, torch.Tensor],
    data: ImageData,
    train_forget: torch.Tensor,
    test_forget: torch.Tensor,
    inferred: torch.Tensor,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) of each split of `schema.SPLITS`, masked out of the train and test logits; `retain_train`
    holds the inferred retain images."""
    retain_train = ~train_forget & inferred
    return {
        "test": (logits["test"], data.test_y),
        "forget_test": (logits["test"][test_forget], data.test_y[test_forget]),
        "retain_test": (logits["test"][~test_forget], data.test_y[~test_forget]),
        "forget_train": (logits["train"][train_forget], data.train_y[train_forget]),
        "retain_train": (logits["train"][retain_train], data.train_y[retain_train]),
    }


def predict(model: nn.Module, x: torch.Tensor, mean, std, device="cpu", batch_size: int | None = None) -> torch.Tensor:
    """fp32 logits on the CPU for uint8 images `x`, normalised with the evaluation transform.

    The model runs channels_last, converted back to its own layout afterwards (outside `inference_mode`, so
    its parameters stay usable for autograd); mean/std go to the device once and the logits come back once:
    no host-device sync per batch.
    """
    device = torch.device(device)
    batch_size = batch_size or BATCH_SIZE.get(device.type, BATCH_SIZE["cuda"])
    if len(x) == 0:
        return torch.empty(0)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)

    def batch(i: int) -> torch.Tensor:
        images = normalize(x[i : i + batch_size].to(device, non_blocking=True), mean_t, std_t)
        return images.contiguous(memory_format=torch.channels_last)

    model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            forward = inference_forward(model, batch(0), len(x))
            outputs = [forward(batch(i)).float() for i in range(0, len(x), batch_size)]
    finally:
        model.to(memory_format=torch.contiguous_format)
    return torch.cat(outputs).cpu()


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
