"""Our Fashion-MNIST table beside the model card's: the original's test accuracy on all 10 classes, and each
model retrained without one class on its 9 retained classes (fp32 rows of a run's results.parquet).

    cvmf-ray grid --config configs/fashionmnist-resnet18.yaml --gpus 1     # the published recipe (GPU)
    python scripts/model_card.py results/fashionmnist-resnet18

The card (HF Yurim0507/resnet18-fashionmnist-unlearning; reference/real-data.md): ResNet-18, small-image stem,
200 epochs of SGD 0.1 with Nesterov, cosine, batch 128, crop 4 + flip, gradient clipping 0.5.
"""

from __future__ import annotations

import argparse
import json
from statistics import mean

import pyarrow.parquet as pq

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CARD_ORIGINAL = 95.39
# each model retrained without class c, accuracy on the other 9 classes (%)
CARD_RETRAINED = (96.54, 95.07, 95.99, 95.69, 95.92, 94.88, 97.76, 95.37, 94.76, 95.33)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run of Fashion-MNIST with retrains (e.g. results/fashionmnist-resnet18)")
    run = parser.parse_args().run_dir
    table = pq.read_table(f"{run}/results.parquet")
    rows = [r for r in table.to_pylist() if r["dataset"] == "fashionmnist" and r["quant"] == "fp32"]
    info = json.loads((table.schema.metadata or {}).get(b"cvmf_ray.run", b"{}"))
    epochs = ((info.get("grid") or {}).get("epochs")) or "the recipe's"
    for model in sorted({r["model"] for r in rows}):
        ours = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        originals = [r for r in ours if r["method"] == "original"]
        print(f"{model} on Fashion-MNIST, {epochs} epochs; mean over seeds {sorted({r['seed'] for r in ours})}")
        print(f"{'':28}{'ours':>8}{'card':>8}{'diff':>8}")
        if originals:
            _line("original, 10 classes", mean(100 * r["test_accuracy"] for r in originals), CARD_ORIGINAL)
        for c, name in enumerate(CLASSES):
            retrained = [r for r in ours if r["method"] == "retrain" and r["forget_class"] == c]
            if retrained:
                accuracy = mean(100 * r["retain_test_accuracy"] for r in retrained)
                _line(f"retrained without {name}", accuracy, CARD_RETRAINED[c])
        vectors = [r["test_class_accuracy"] for r in originals if r.get("test_class_accuracy")]
        if vectors:
            per_class = [f"{name} {100 * mean(v[c] for v in vectors):.1f}" for c, name in enumerate(CLASSES)]
            print("original per class (%): " + ", ".join(per_class))


def _line(label: str, ours: float, card: float) -> None:
    print(f"{label:28}{ours:8.2f}{card:8.2f}{ours - card:+8.2f}")


if __name__ == "__main__":
    main()
