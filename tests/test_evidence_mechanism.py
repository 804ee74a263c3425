"""The quantization mechanism from weights alone, on known answers: the weight-only modes' own grid
(`QuantizedLayer`, one scale per output channel), a freshly initialised small_cnn, and updates built to
stay inside each weight's bin, or to leave it."""

import math

import pytest
import torch
from torch import nn

from cvmf_ray.evidence.mechanism import layer_step, quant_update, quantized_weight_names
from cvmf_ray.models import create_model
from cvmf_ray.quant._grid_modes import IntGrid
from cvmf_ray.quant._layers import QuantizedLayer


def grid_quantizer(bits: int):
    """The fp32 values `int{bits}_weight` computes with for a weight: its QuantizedLayer, decoded."""

    def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
        holder = nn.Linear(1, 1, bias=False)
        holder.weight = nn.Parameter(weight.clone())
        layer = QuantizedLayer(holder, IntGrid(bits), quantize_inputs=False)
        return layer.grid.decode(layer.qweight, layer.weight_shape) * layer.weight_scale

    return quantize_weight


def channel_step(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Each output channel's step (amax / qmax), broadcastable against `weight`."""
    amax = weight.abs().flatten(1).amax(1)
    return (amax / IntGrid(bits).qmax).view(-1, *[1] * (weight.dim() - 1))


def channel_max(weight: torch.Tensor) -> torch.Tensor:
    """True at each output channel's largest |w|: moving it would change the channel's scale."""
    flat = weight.abs().flatten(1)
    return (flat == flat.amax(1, keepdim=True)).view_as(weight)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    model = create_model("small_cnn", 1, 10)
    return model.state_dict(), quantized_weight_names(model)


def moved(state: dict, names: list[str], update) -> dict:
    """A copy of `state` with update(weight) added to each named weight, each channel's max |w| left alone."""
    copy = {k: v.clone() for k, v in state.items()}
    for name in names:
        weight = state[name]
        copy[name] = torch.where(channel_max(weight), weight, weight + update(weight))
    return copy


def test_the_quantized_weights_are_every_conv_and_linear_weight(original):
    _, names = original
    assert names == ["0.weight", "3.weight", "7.weight", "12.weight"]  # BatchNorm and biases are off-grid


def test_the_step_estimate_recovers_the_grids_own_step(original):
    state, names = original
    quantize = grid_quantizer(8)
    for name in names[1:]:  # ≥ 128 weights per channel: the rounding error is close to uniform
        weight = state[name]
        true_step = float(channel_step(weight, 8).square().mean().sqrt())
        assert layer_step(weight, quantize(weight)) == pytest.approx(true_step, rel=0.05)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_move_within_half_a_step_snaps_back_entirely(original, bits):
    state, names = original
    quantize = grid_quantizer(bits)
    # each weight goes half-way to its grid point: < half a step, and never across a bin edge
    unlearnt = moved(state, names, lambda w: 0.5 * (quantize(w) - w))
    result = quant_update(state, unlearnt, names, quantize)
    assert result["quant_update_ratio"] == 0.0
    assert result["quant_snapped_back"] == 1.0
    # the update is half of each weight's rounding error, whose rms is step/√12
    assert result["quant_update_to_step"] == pytest.approx(0.5 / math.sqrt(12), rel=0.05)
    assert all(layer["snapped_back"] == 1.0 for layer in result["quant_update_per_layer"].values())


@pytest.mark.parametrize("bits", [4, 8])
def test_a_move_of_more_than_one_step_survives(original, bits):
    state, names = original
    quantize = grid_quantizer(bits)
    # 1.5 steps toward zero: every moved weight lands one or two codes away, and no scale changes
    unlearnt = moved(state, names, lambda w: -1.5 * channel_step(w, bits) * w.sign())
    result = quant_update(state, unlearnt, names, quantize)
    assert result["quant_snapped_back"] == 0.0
    assert 0.6 < result["quant_update_ratio"] < 1.4  # one or two steps of quantized move per 1.5 steps
    assert result["quant_update_to_step"] == pytest.approx(1.5, rel=0.1)


def test_a_model_against_itself_has_no_update(original):
    state, names = original
    result = quant_update(state, state, names, grid_quantizer(4))
    assert result["quant_update_ratio"] is None and result["quant_snapped_back"] is None
    assert result["quant_update_to_step"] == 0.0


def test_without_quantization_the_whole_update_survives(original):
    state, names = original
    unlearnt = moved(state, names, lambda w: 1e-3 * torch.randn_like(w))
    result = quant_update(state, unlearnt, names, lambda w: w)
    assert result["quant_update_ratio"] == pytest.approx(1.0)
    assert result["quant_snapped_back"] == 0.0
    assert result["quant_update_to_step"] is None  # fp32 has no step


@pytest.mark.parametrize("bits", [4, 8])
def test_a_tiny_update_that_rescales_every_channel_still_snaps_back(original, bits):
    state, names = original
    quantize = grid_quantizer(bits)
    # every weight, each channel's largest included, moves by 1e-4 of a step: every scale changes a little,
    # every quantized value shifts by far less than a step, and almost no weight changes grid point
    unlearnt = {k: v.clone() for k, v in state.items()}
    for name in names:
        unlearnt[name] = state[name] + 1e-4 * channel_step(state[name], bits) * torch.randn_like(state[name])
    result = quant_update(state, unlearnt, names, quantize)
    assert result["quant_snapped_back"] > 0.99
    assert result["quant_update_to_step"] == pytest.approx(1e-4, rel=0.2)
