"""What the evidence metrics of issue 13 cost per evaluated row, what they show, and their bounds at scale.

    python scripts/bench_evidence.py                         # digits (small_cnn, forget class 0), 1 thread
    python scripts/bench_evidence.py --fashion-root ROOT     # + Fashion-MNIST scale (torchvision layout)

Digits: trains the original and the retrain model (default recipe), unlearns with three methods, and
quantizes each fp32 model into the weight-only grids `int8_weight` and `int4_weight`. For every row it times
`evaluate()` with one simple-MIA draw (the evaluate stage before issue 13, less the per-fold overhead that
draw no longer pays; the SVC shadow set is below the old 5,000 cap on digits, so that change costs nothing
here) against what the per-row metrics add: the `privacy.LR_DRAWS` − 1 more draws, the quantization
mechanism (quantized rows), JS/KL to retrain, per-class accuracy and the privacy score. Target: added ≤ 30%
of the former. The denominator is `evaluate()` alone, without the cell's model restore and data loading,
so the share is an upper bound. Quantized rows are compared with the retrain model quantized the same way.
Relearn is timed apart. The forgetting quality is per group, not per row: its cost at 10 seeds, and its
floor, the F of models drawn from retrain's own distribution.

Fashion-MNIST: trains small_cnn briefly (`--fashion-epochs`) as original and retrain, then times the SVC
attack on all 9,000 retain-test non-members (against the old 5,000 cap), the averaged simple MIA, F over
6,000 forget examples at 10 seeds, and relearn (its worst case: `max_steps` steps).
"""

import argparse
import copy
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn

from cvmf_ray import privacy
from cvmf_ray.config import RelearnParams, load_config
from cvmf_ray.datasets import DATASETS, ImageData
from cvmf_ray.evidence.forgetting_quality import forgetting_quality
from cvmf_ray.evidence.mechanism import quant_update, quantized_weight_names
from cvmf_ray.evidence.outputs import distance_to_retrain, per_class_accuracy
from cvmf_ray.evidence.privacy_score import privacy_score
from cvmf_ray.evidence.relearn import dequantized_copy, relearn
from cvmf_ray.forget import ForgetSpec, forget_mask, forget_masks, split_data
from cvmf_ray.methods import resolve_method
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.stages import evaluate, quantize, train, unlearn
from cvmf_ray.stages.evaluate import predict

FORGET = ForgetSpec("class", 0)
METHODS = ("gradient_ascent", "finetune", "random_label")
GRIDS = ("int8_weight", "int4_weight")
REPEATS = 3  # per-row timings: the fastest of 3


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - started


def fastest(repeats: int, fn, *args, **kwargs):
    """`fn`'s result and its fastest of `repeats` runs: on a shared machine, the least disturbed one."""
    runs = [timed(fn, *args, **kwargs) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def logits_of(model: nn.Module, splits: dict, data: ImageData) -> dict[str, torch.Tensor]:
    return {split: predict(model, x, data.mean, data.std, "cpu", 1024) for split, (x, _) in splits.items()}


def added_metrics(row: dict, gold: dict, splits: dict, data: ImageData) -> dict:
    """The per-row metrics of issue 13 beyond evaluate(): the lead computes these from the same logits."""
    model, retrain = row["logits"], gold["logits"]
    metrics = distance_to_retrain(model, retrain)
    metrics["privacy_score"] = privacy_score(model["forget_train"], retrain["forget_train"])
    metrics["class_accuracy_test"] = per_class_accuracy(model["test"], splits["test"][1], data.num_classes)
    if row["quantize_weight"] is not None:
        metrics.update(quant_update(*row["weights"], row["names"], row["quantize_weight"]))
    return metrics


def lr_draws_seconds(row_logits: dict, splits: dict) -> float:
    """What the simple MIA's extra draws add: the averaged value's time minus one draw's."""
    losses = [privacy.per_sample_loss(row_logits[s], splits[s][1]) for s in ("forget_train", "test")]
    seconds = {}
    for draws in (1, privacy.LR_DRAWS):
        saved, privacy.LR_DRAWS = privacy.LR_DRAWS, draws
        seconds[draws] = fastest(REPEATS, privacy.seed_lr_accuracy, *losses)[1]
        privacy.LR_DRAWS = saved
    return seconds[privacy.LR_DRAWS] - seconds[1]


def digits_rows(data: ImageData) -> dict[tuple[str, str], dict]:
    """Every (method, quant) row: the model evaluated, the fp32 model relearn starts from, and Q."""
    mask = forget_mask(FORGET, data.train_y, seed=0)

    def fresh():
        torch.manual_seed(0)
        return create_model("small_cnn", 1, data.num_classes)

    recipe = load_config().recipe_for("digits")
    original = train(fresh(), data, recipe, seed=0)[0]
    fp32 = {"original": original, "retrain": train(fresh(), data, recipe, seed=0, exclude=mask)[0]}
    for name in METHODS:
        hparams = resolve_method(name).resolve_params({}, None, "digits")
        fp32[name] = unlearn(copy.deepcopy(original), data, FORGET, name, hparams, seed=0)[0]
    rows = {}
    for name, model in fp32.items():
        rows[name, "fp32"] = {"model": model, "relearn_model": model, "quantize_weight": None}
        for mode in GRIDS:
            q = QUANT_MODES.get(mode).quantize_weight
            rows[name, mode] = {
                "model": quantize(model, mode, None)[0],
                "relearn_model": dequantized_copy(model, q),
                "quantize_weight": q,
                "weights": (original.state_dict(), model.state_dict()),
                "names": quantized_weight_names(original),
            }
    return rows


def digits_section(relearn_params: RelearnParams) -> None:
    data = DATASETS.get("digits").load_data("~/.cache/cvmf-ray/data")
    splits, masks = split_data(data, FORGET, seed=0), forget_masks(data, FORGET, seed=0)
    rows, train_s = timed(digits_rows, data)
    print(f"## digits / small_cnn / forget class 0: 5 models trained or unlearnt in {train_s:.0f} s")
    print(
        f"# per row, fastest of {REPEATS}: eval_s = evaluate() with 1 simple-MIA draw; lr_s = the other "
        f"{privacy.LR_DRAWS - 1} draws; rest_s = every other per-row metric; added = (lr_s + rest_s) / eval_s\n"
    )
    for row in rows.values():  # evaluate() as before issue 13: one simple-MIA draw
        saved, privacy.LR_DRAWS = privacy.LR_DRAWS, 1
        (row["base"], _), row["eval_s"] = fastest(REPEATS, evaluate, row["model"], data, *masks)
        privacy.LR_DRAWS = saved
        row["logits"] = logits_of(row["model"], splits, data)  # evaluate() computes these once already
        row["lr_extra_s"] = lr_draws_seconds(row["logits"], splits)
    print(
        f"{'method':<16}{'quant':<12}{'eval_s':>7}{'lr_s':>6}{'rest_s':>7}{'added':>7}{'forget':>7}{'ratio':>7}{'snap':>6}"
        f"{'upd/step':>9}{'js_fgt':>7}{'kl_fgt':>7}{'js_tst':>7}{'PS':>6}{'relearn':>8}{'rl_s':>6}"
    )
    shares, relearn_s = [], []
    forget_x, forget_y = splits["forget_train"]
    for (name, mode), row in rows.items():
        metrics, metrics_s = fastest(REPEATS, added_metrics, row, rows["retrain", mode], splits, data)
        added_s = metrics_s + row["lr_extra_s"]
        shares.append(added_s / row["eval_s"])
        result = relearn(row["relearn_model"], forget_x, forget_y, data.mean, data.std, relearn_params)
        relearn_s.append(result["relearn_seconds"])
        print(
            f"{name:<16}{mode:<12}{row['eval_s']:>7.3f}{row['lr_extra_s']:>6.3f}{metrics_s:>7.3f}{shares[-1]:>7.0%}"
            f"{row['base']['forget_train_accuracy']:>7.3f}{fmt(metrics.get('quant_update_ratio')):>7}"
            f"{fmt(metrics.get('quant_snapped_back'), 2):>6}{fmt(metrics.get('quant_update_to_step'), 2):>9}"
            f"{fmt(metrics['js_to_retrain_forget_train']):>7}{fmt(metrics['kl_to_retrain_forget_train'], 2):>7}"
            f"{fmt(metrics['js_to_retrain_test']):>7}{metrics['privacy_score']:>6.3f}"
            f"{fmt(result['relearn_steps'], 0):>8}{result['relearn_seconds']:>6.2f}"
        )
    print(
        f"# added per row: median {statistics.median(shares):.0%}, max {max(shares):.0%} of evaluate() "
        f"(target <= 30%); relearn per row: median {statistics.median(relearn_s):.2f} s, max {max(relearn_s):.2f} s"
    )
    forget_logits = [row["logits"]["forget_train"] for row in rows.values()]
    seeds = 10
    models = [forget_logits[i % len(forget_logits)] for i in range(seeds)]
    _, fq_s = timed(forgetting_quality, models, models[::-1])
    print(f"# forgetting quality, {seeds} seeds x {len(forget_x)} forget examples: {fq_s * 1000:.0f} ms per group\n")


def forgetting_quality_floor(draws: int = 5) -> None:
    """F of evaluated models drawn from the retrain models' own distribution: what 'as good as retrain'
    scores with N seeds. Each model's logits = shared per-example logits + independent per-model noise."""
    print("## forgetting quality of a method indistinguishable from retrain (200 examples, mean of 5 draws)")
    generator = torch.Generator().manual_seed(0)
    for seeds in (2, 3, 5, 10):
        values = []
        for _ in range(draws):
            shared = torch.randn(200, 10, generator=generator) * 3
            arms = [[shared + torch.randn(200, 10, generator=generator) for _ in range(seeds)] for _ in range(2)]
            values.append(forgetting_quality(*arms)["forgetting_quality"])
        print(f"seeds {seeds:>2}: F = {np.mean(values):.3f} (draws {min(values):.3f}..{max(values):.3f})")
    print()


def fashion_section(root: str, epochs: int, relearn_params: RelearnParams) -> None:
    data = DATASETS.get("fashionmnist").load_data(root)
    splits = split_data(data, FORGET, seed=0)
    mask = forget_mask(FORGET, data.train_y, seed=0)
    recipe = load_config(epochs=epochs).recipe_for("fashionmnist")
    models = {}
    for name, exclude in (("original", None), ("retrain", mask)):
        torch.manual_seed(0)
        (models[name], _), seconds = timed(train, create_model("small_cnn", 1, 10), data, recipe, 0, exclude)
        print(f"## Fashion-MNIST / small_cnn: {name} trained {epochs} epoch(s) in {seconds:.0f} s")
    for name, model in models.items():
        outputs = {s: (predict(model, x, data.mean, data.std, "cpu", 1024), y) for s, (x, y) in splits.items()}
        loss = {s: privacy.per_sample_loss(*outputs[s]) for s in outputs}
        confidence = {s: np.exp(-v) for s, v in loss.items()}
        members, nonmembers = confidence["retain_train"], confidence["retain_test"]
        capped = np.random.default_rng(0).choice(nonmembers, 5000, replace=False)
        old, old_s = timed(privacy.svc_efficacy, members, capped, confidence["forget_train"])
        new, new_s = timed(privacy.svc_efficacy, members, nonmembers, confidence["forget_train"])
        lr, lr_s = timed(privacy.seed_lr_accuracy, loss["forget_train"], loss["test"])
        print(
            f"{name}: test acc {(outputs['test'][0].argmax(1) == outputs['test'][1]).float().mean():.3f}; "
            f"SVC {len(members)} members available, {len(nonmembers)} non-members: all {new:.4f} in {new_s:.1f} s, "
            f"old 5,000 cap {old:.4f} in {old_s:.1f} s; simple MIA ({privacy.LR_DRAWS} draws, "
            f"{len(loss['forget_train'])} vs {len(loss['test'])}) {lr:.4f} in {lr_s:.1f} s"
        )
        models[name] = (model, outputs)
    forget = models["original"][1]["forget_train"][0]
    noisy = [[forget + 0.1 * torch.randn_like(forget) for _ in range(10)] for _ in range(2)]
    _, fq_s = timed(forgetting_quality, *noisy)
    print(f"forgetting quality, 10 seeds x {len(forget)} forget examples: {fq_s * 1000:.0f} ms per group")
    forget_x, forget_y = splits["forget_train"]
    for name, (model, _) in models.items():
        result = relearn(model, forget_x, forget_y, data.mean, data.std, relearn_params)
        print(f"relearn {name}: {result['relearn_steps']} steps in {result['relearn_seconds']:.1f} s")
    bounded = RelearnParams(**{**relearn_params.model_dump(), "threshold": 1.0})  # never reached: every step
    worst = relearn(models["retrain"][0], forget_x, forget_y, data.mean, data.std, bounded)
    print(f"relearn worst case ({bounded.max_steps} steps, never reached): {worst['relearn_seconds']:.1f} s\n")


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    parser.add_argument("--fashion-root", help="data root holding FashionMNIST/raw/*-ubyte (torchvision layout)")
    parser.add_argument("--fashion-epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(
        f"# torch {torch.__version__}, {platform.python_implementation()} {platform.python_version()}; "
        f"{platform.machine()}, {args.threads} thread(s) of {os.cpu_count()} CPUs; load average {load:.1f}\n"
    )
    params = RelearnParams()
    print(f"# relearn: {params!r}\n")
    digits_section(params)
    forgetting_quality_floor()
    if args.fashion_root:
        fashion_section(args.fashion_root, args.fashion_epochs, params)


if __name__ == "__main__":
    main()
