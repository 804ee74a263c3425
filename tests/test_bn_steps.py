"""Where forgetting lives: BatchNorm re-estimation as a deployment step, and the BN-frozen control, from the
stage functions through the grid's keys to the results table's rows."""

import copy

import pytest
import torch

from cvmf_ray.config import load_config
from cvmf_ray.errors import CellError, UsageError
from cvmf_ray.forget import ForgetSpec, forget_mask
from cvmf_ray.grid import expand_grid
from cvmf_ray.results import assemble
from cvmf_ray.stages import unlearn
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.reestimate import batchnorm_layers, reestimate_batchnorm

FORGET = ForgetSpec("class", 0)


def buffers(model) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_reestimation_is_the_plain_average_of_batch_statistics_and_touches_no_parameter(original, digits):
    model = copy.deepcopy(original)
    before = parameters(model)
    model, used = reestimate_batchnorm(model, digits.train_x, digits.train_y, digits.mean, digits.std, batches=40,
                                       batch_size=64, seed=0)  # fmt: skip
    assert used["bn_reestimate_batches"] == 40 and used["bn_reestimate_batch_size"] == 64
    assert used["bn_reestimate_images"] == 40 * 64  # 1797 images: full batches only, over several passes
    assert all(torch.equal(before[n], p) for n, p in parameters(model).items())
    assert not model.training and all(layer.momentum == 0.1 for layer in batchnorm_layers(model))  # restored
    first = batchnorm_layers(model)[0]
    assert int(first.num_batches_tracked) == 40
    # the first layer's running mean is the mean of its input's per-batch channel means over the same batches
    from cvmf_ray.data import DeviceLoader

    loader, means, seen, epoch = DeviceLoader(digits.train_x, digits.train_y, 64, digits.mean, digits.std), [], 0, 0
    while seen < 40:
        for x, _ in loader.epoch(epoch):
            if len(x) == 64 and seen < 40:
                means.append(model[0](x).mean(dim=(0, 2, 3)))
                seen += 1
        epoch += 1
    torch.testing.assert_close(first.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)


def test_reestimation_on_a_model_without_batchnorm_is_a_cell_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(CellError, match="no BatchNorm"):
        reestimate_batchnorm(model, torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                             (0.5,), (0.5,), batches=1, batch_size=8, seed=0)  # fmt: skip


def test_the_bn_frozen_control_leaves_running_statistics_untouched_and_still_trains_the_rest(original, digits):
    hparams = {"epochs": 3, "lr": 1e-3, "batch_size": 64, "clip": 100.0}
    frozen, _ = unlearn(copy.deepcopy(original), digits, FORGET, "gradient_ascent", hparams, frozen_bn=True)
    free, _ = unlearn(copy.deepcopy(original), digits, FORGET, "gradient_ascent", hparams)
    assert all(torch.equal(original.state_dict()[n], b) for n, b in buffers(frozen).items())
    assert not all(torch.equal(original.state_dict()[n], b) for n, b in buffers(free).items())
    moved = [n for n, p in parameters(frozen).items() if not torch.equal(original.state_dict()[n], p)]
    assert any(n.endswith(".weight") and n.split(".")[0] in ("1", "4", "8") for n in moved)  # BN's affine trains
    assert all(layer.training is False for layer in batchnorm_layers(frozen)) and not frozen.training


def test_gradient_ascent_forgets_in_the_running_statistics_and_reestimation_brings_the_class_back(original, digits):
    """The digits finding (issue 21): gradient ascent's forgetting is a corruption of the running statistics."""
    hparams = {"epochs": 5, "lr": 1e-3, "batch_size": 64, "clip": 100.0}
    model, _ = unlearn(copy.deepcopy(original), digits, FORGET, "gradient_ascent", hparams)
    forget = forget_mask(FORGET, digits.train_y, 0)

    def forget_accuracy(m) -> float:
        logits = predict(m, digits.train_x[forget], digits.mean, digits.std, "cpu", 1024)
        return (logits.argmax(1) == 0).float().mean().item()

    unlearnt = forget_accuracy(model)
    retain_x, retain_y = digits.train_x[~forget], digits.train_y[~forget]
    restored, _ = reestimate_batchnorm(model, retain_x, retain_y, digits.mean, digits.std, batches=100,
                                       batch_size=64, seed=0)  # fmt: skip
    assert unlearnt < 0.3 and forget_accuracy(restored) > 0.9, (unlearnt, forget_accuracy(restored))


def test_the_bn_axes_add_cells_without_changing_any_existing_key():
    plain = expand_grid(load_config(methods="original,retrain,gradient_ascent", quant="fp32,int8"))
    both = expand_grid(load_config(methods="original,retrain,gradient_ascent", quant="fp32,int8",
                                   bn_reestimate="none,train,retain", unlearn_bn="train,frozen"))  # fmt: skip
    assert plain.cells.keys() <= both.cells.keys()  # the defaults add nothing to a cell's parameters
    counts = both.to_json()["counts"]
    # 3 fp32 models as methods give them + gradient ascent frozen = 4, each re-estimated on train and on retain
    assert counts["unlearn"] == 2 and counts["reestimate"] == 4 * 2
    assert counts["evaluate"] == 4 * 3 * 2 and counts["compare"] == 4 * 3 * 2  # 4 treatments x 3 steps x 2 modes
    steps = {c.params["bn_reestimate"] for c in both.stage("reestimate")}
    assert steps == {"train", "retain"} and all(c.params["batches"] == 100 for c in both.stage("reestimate"))
    assert {c.params["batch_size"] for c in both.stage("reestimate")} == {load_config().recipe_for("digits").batch_size}
    frozen = [c for c in both.stage("unlearn") if c.params.get("unlearn_bn") == "frozen"]
    assert len(frozen) == 1 and frozen[0].params["hparams"] == plain.stage("unlearn")[0].params["hparams"]


@pytest.mark.parametrize(("options", "message"), [
    ({"methods": "original,retrain", "unlearn_bn": "frozen"}, "no method of this grid trains BatchNorm"),
    ({"bn_reestimate": "none,calibration"}, "'calibration'"),
    ({"unlearn_bn": "eval"}, "'eval'"),
])  # fmt: skip
def test_bn_options_that_cannot_apply_are_one_usage_error(options, message):
    with pytest.raises(UsageError, match=message):
        load_config(**options)


def test_recovery_compares_every_deployment_with_the_model_as_unlearnt_and_gaps_use_the_same_deployment():
    grid = expand_grid(load_config(methods="retrain,gradient_ascent", quant="fp32,int8", bn_reestimate="none,train"))
    rows = {}
    for cell in grid.stage("evaluate"):
        p = cell.params
        step, quant = p.get("bn_reestimate", "none"), p["quant"]
        forget = {("gradient_ascent", "none"): 0.1, ("gradient_ascent", "train"): 0.9}.get((p["method"], step), 0.0)
        rows[cell.key] = {"key": cell.key, "status": "ok", "forget_train_accuracy": forget + (quant == "int8") * 0.01,
                          "retain_train_accuracy": 1.0, "test_accuracy": 0.9, "mia_efficacy": 0.5}  # fmt: skip
        from cvmf_ray.results import identity

        rows[cell.key].update(identity(cell))
    table = {(r["method"], r["quant"], r["bn_reestimate"]): r for r in assemble(grid, rows, {}, {}).to_pylist()}
    assert table["gradient_ascent", "fp32", "none"]["recovery_forget_train_accuracy"] is None  # the reference
    assert table["gradient_ascent", "fp32", "train"]["recovery_forget_train_accuracy"] == pytest.approx(0.8)
    assert table["gradient_ascent", "int8", "train"]["recovery_forget_train_accuracy"] == pytest.approx(0.81)
    assert table["gradient_ascent", "int8", "none"]["recovery_forget_train_accuracy"] == pytest.approx(0.01)
    # the gap is to the retrain of the same deployment: its int8 after re-estimation, not its plain fp32
    assert table["gradient_ascent", "int8", "train"]["gap_to_retrain"] == pytest.approx((0.9 - 0.0) / 4)
    assert table["gradient_ascent", "fp32", "none"]["unlearn_bn"] == "train"
    assert table["retrain", "fp32", "none"]["unlearn_bn"] is None
