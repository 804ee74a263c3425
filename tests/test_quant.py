"""Quantization modes on trained digits models: fidelity to fp32, real storage size, tensor-only round trip,
normalised calibration, and clear failures where a mode cannot apply."""

import pytest
import safetensors.torch
import torch
from torch import nn

from cvmf_ray.config import TrainRecipe
from cvmf_ray.datasets import DATASETS
from cvmf_ray.errors import CellError
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.quant._layers import pack_int4, unpack_int4
from cvmf_ray.quant.int8 import prepare
from cvmf_ray.stages import quantize, train
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.quantize import calibration_images

RECIPES = {  # short, but accurate enough that one flipped prediction in 450 is visible (~97-99.5% on test)
    "small_cnn": TrainRecipe(epochs=6, batch_size=64, lr=0.05),
    "resnet18": TrainRecipe(epochs=3, batch_size=128, lr=0.02),
}
# max drop of test accuracy vs fp32, min top-1 agreement with fp32, storage bits per weight
EXPECTED = {
    "fp32": (0.0, 1.0, 32),
    "fp16": (0.01, 0.98, 16),
    "bf16": (0.01, 0.98, 16),
    "int8": (0.01, 0.98, 8),
    "int8_weight": (0.01, 0.98, 8),
    "fp8_e4m3": (0.01, 0.98, 8),
    "fp8_e5m2": (0.02, 0.97, 8),
    "int4_weight": (0.03, 0.95, 4),
}


@pytest.fixture(scope="module")
def digits():
    return DATASETS.get("digits").load_data("unused")


@pytest.fixture(scope="module")
def calibration(digits):
    return calibration_images(digits, ForgetSpec("class", 0), seed=0, size=512)


@pytest.fixture(scope="module", params=list(RECIPES))
def trained(request, digits):
    torch.manual_seed(0)
    model, _ = train(create_model(request.param, 1, 10), digits, RECIPES[request.param], seed=0)
    logits = predict(model, digits.test_x, digits.mean, digits.std, "cpu", 1024)
    return request.param, model, logits


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_mode_is_faithful_and_round_trips_through_safetensors(mode, trained, digits, calibration):
    arch, model, fp32_logits = trained
    max_drop, min_agreement, bits = EXPECTED[mode]
    qmodel, info = quantize(model, mode, calibration)
    logits = predict(qmodel, digits.test_x, digits.mean, digits.std, "cpu", 1024)

    fp32_accuracy = (fp32_logits.argmax(1) == digits.test_y).float().mean().item()
    accuracy = (logits.argmax(1) == digits.test_y).float().mean().item()
    assert fp32_accuracy > 0.95, f"{arch} trained too briefly for a meaningful comparison"
    assert accuracy >= fp32_accuracy - max_drop - 1e-9, f"{arch} {mode}: {accuracy:.4f} vs fp32 {fp32_accuracy:.4f}"
    assert (logits.argmax(1) == fp32_logits.argmax(1)).float().mean() >= min_agreement

    fp32_bytes = sum(p.numel() * 4 for p in model.state_dict().values())
    assert info["model_bytes"] <= fp32_bytes * bits / 32 * 1.1  # weights at `bits`; scales, BN, biases fit in 10%

    mode_impl = QUANT_MODES.get(mode)
    state = safetensors.torch.load(safetensors.torch.save(mode_impl.state_dict(qmodel)))
    restored = mode_impl.restore(create_model(arch, 1, 10).eval(), state)
    assert torch.equal(predict(restored, digits.test_x, digits.mean, digits.std, "cpu", 1024), logits)
    assert mode_impl.model_bytes(restored) == info["model_bytes"]
    if mode != "fp32":
        assert not torch.equal(logits, fp32_logits), "a quantized mode returned the fp32 model"


def test_calibration_is_normalised_and_the_unquantized_pipeline_is_the_identity(trained, digits, calibration):
    arch, model, _ = trained
    # class-balanced retain images (class 0 is forgotten), through exactly the evaluation transform
    lo, hi = (0 - digits.mean[0]) / digits.std[0], (1 - digits.mean[0]) / digits.std[0]
    assert len(calibration) == 512 and calibration.min() == pytest.approx(lo) and calibration.max() == pytest.approx(hi)

    # identity control: export, BN folding and calibration without the quantizers (observers only watch) = fp32
    prepared = prepare(model, calibration)
    assert not any("batch_norm" in str(node.target) for node in prepared.graph.nodes), "BatchNorm was not folded"
    input_observer = next(n for n in prepared.graph.nodes if n.op == "call_module" and n.args[0].op == "placeholder")
    observer = prepared.get_submodule(input_observer.target)
    assert (observer.min_val.item(), observer.max_val.item()) == pytest.approx((lo, hi))
    x = calibration[:64]
    with torch.no_grad():
        assert torch.allclose(prepared(x), model(x), atol=1e-4)

    # fp8: the first layer's static input scale spans the normalised range (max |x| / 448 for e4m3)
    qmodel, _ = quantize(model, "fp8_e4m3", calibration)
    first = next(m for m in qmodel.modules() if hasattr(m, "input_scale"))
    assert first.input_scale.item() == pytest.approx(max(-lo, hi) / 448)


def test_inapplicable_models_fail_the_cell_with_a_reason(calibration):
    no_weights = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for mode in ("int8_weight", "int4_weight", "fp8_e4m3"):
        with pytest.raises(CellError, match="neither"):
            quantize(no_weights, mode, calibration)

    class DataDependent(nn.Module):  # Python control flow on tensor values: torch.export cannot capture it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else self.conv(-x)

    with pytest.raises(CellError, match="torch.export"):
        quantize(DataDependent(), "int8", calibration)


def test_int4_packing_is_lossless():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3)[:-1]  # every value, odd count
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (codes.numel() + 1) // 2
    assert torch.equal(unpack_int4(packed, codes.numel()), codes)
