"""Quantization modes on trained digits models: fidelity to fp32, real storage size, tensor-only round trip,
normalised calibration, clear failures where a mode cannot apply, the numerics of the fast paths (fp16
emulation, weights decoded once, compiled int8) and `quantize_weight`, the grid value of each mode."""

import copy

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from cvmf_ray.config import TrainRecipe
from cvmf_ray.data import normalize
from cvmf_ray.datasets.digits import TRAIN_RECIPE as DIGITS_RECIPE
from cvmf_ray.errors import CellError
from cvmf_ray.forget import ForgetSpec
from cvmf_ray.models import create_model
from cvmf_ray.quant import QUANT_MODES, inference_forward, int8
from cvmf_ray.quant import _layers as layers
from cvmf_ray.quant._grid_modes import pack_int4, unpack_int4
from cvmf_ray.quant._layers import QuantizedLayer, RoundToFp16, aligned
from cvmf_ray.quant.int8 import prepare
from cvmf_ray.stages import quantize, train
from cvmf_ray.stages.evaluate import predict
from cvmf_ray.stages.quantize import calibration_images

RECIPES = {  # digits' recipe, short, but accurate enough that one flipped prediction in 450 is visible
    "small_cnn": TrainRecipe(**{**DIGITS_RECIPE, "epochs": 6}),
    "resnet18": TrainRecipe(**{**DIGITS_RECIPE, "epochs": 3, "batch_size": 128, "lr": 0.02}),
}
# max drop of test accuracy vs fp32, min top-1 agreement with fp32, storage bits per quantized weight
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
GRID_MODES = ("int8_weight", "int4_weight", "fp8_e4m3", "fp8_e5m2")
FP16_EPS = torch.finfo(torch.float16).eps  # 2^-10: one fp16 ulp of a value in [1, 2)


@pytest.fixture(scope="module")
def calibration(digits):
    return calibration_images(digits, ForgetSpec("class", 0), seed=0, size=512)


@pytest.fixture(scope="module", params=list(RECIPES))
def trained(request, digits):
    torch.manual_seed(0)
    model, _ = train(create_model(request.param, 1, 10), digits, RECIPES[request.param], seed=0)
    logits = predict(model, digits.test_x, digits.mean, digits.std)
    return request.param, model, logits


def _fp16_ulp(magnitude: torch.Tensor) -> torch.Tensor:
    """The spacing of fp16 values at `magnitude` (2^-24 below the normal range)."""
    return torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(2**-14)))) * FP16_EPS


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_mode_is_faithful_and_round_trips_through_safetensors(mode, trained, digits, calibration):
    arch, model, fp32_logits = trained
    max_drop, min_agreement, bits = EXPECTED[mode]
    qmodel, info = quantize(model, mode, calibration)
    logits = predict(qmodel, digits.test_x, digits.mean, digits.std)

    fp32_accuracy = (fp32_logits.argmax(1) == digits.test_y).float().mean().item()
    accuracy = (logits.argmax(1) == digits.test_y).float().mean().item()
    assert fp32_accuracy > 0.95, f"{arch} trained too briefly for a meaningful comparison"
    assert accuracy >= fp32_accuracy - max_drop - 1e-9, f"{arch} {mode}: {accuracy:.4f} vs fp32 {fp32_accuracy:.4f}"
    assert (logits.argmax(1) == fp32_logits.argmax(1)).float().mean() >= min_agreement

    # weights the mode quantizes at `bits`, every other tensor fp32; scales, BN and biases fit in 10%
    mode_impl = QUANT_MODES.get(mode)
    applies = getattr(mode_impl, "applies_to", lambda weight: True)
    quantized = sum(w.numel() for w in _weights(model).values() if applies(w))
    fp32_numel = sum(t.numel() for t in model.state_dict().values())
    assert info["model_bytes"] <= (quantized * bits / 8 + (fp32_numel - quantized) * 4) * 1.1

    state = safetensors.torch.load(safetensors.torch.save(mode_impl.state_dict(qmodel)))
    restored = mode_impl.restore(create_model(arch, 1, 10).eval(), state)
    assert torch.equal(predict(restored, digits.test_x, digits.mean, digits.std), logits)
    assert mode_impl.model_bytes(restored) == info["model_bytes"]
    if mode != "fp32":
        assert not torch.equal(logits, fp32_logits), "a quantized mode returned the fp32 model"


def test_int8_captures_an_architecture_once_and_every_model_keeps_its_own_values(
    trained, digits, calibration, monkeypatch
):
    """Quantize and restore copy a graph torch.export captured once per architecture: each model's own weights,
    BatchNorm statistics and scales go into its copy."""
    arch, model, _ = trained
    shrunk = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*shrunk.parameters(), *(m.running_mean for m in shrunk.modules() if hasattr(m, "running_mean"))]:
            tensor.mul_(0.7)
    captures = []
    export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: captures.append(1) or export(*a, **k))
    int8._EXPORTED.clear()
    impl, restored_logits = QUANT_MODES.get("int8"), []
    for source in (model, shrunk, model):
        qmodel, _ = quantize(source, "int8", calibration)
        state = safetensors.torch.load(safetensors.torch.save(impl.state_dict(qmodel)))
        restored = impl.restore(create_model(arch, 1, 10).eval(), state)
        restored_logits.append(predict(restored, digits.test_x, digits.mean, digits.std))
        assert torch.equal(restored_logits[-1], predict(qmodel, digits.test_x, digits.mean, digits.std))
    assert len(captures) == 1  # three quantizations and three restores
    assert torch.equal(restored_logits[0], restored_logits[2])
    assert not torch.equal(restored_logits[0], restored_logits[1])


def test_int8_captures_afresh_a_model_whose_forward_the_cached_graph_does_not_compute(calibration):
    """Same class and repr, other behaviour: a plain attribute the forward branches on (the cached copy computes
    something else), a tensor outside the state_dict (the copy cannot hold it). Each model gets its own graph."""

    class Plugin(nn.Module):
        def __init__(self, negate: bool = False, offset: float | None = None):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 16, 3), nn.Linear(16, 10)
            self.negate, self.offset = negate, None if offset is None else torch.tensor(offset)

        def forward(self, x):
            x = self.conv(x if self.offset is None else x - self.offset)
            return self.head((-x if self.negate else x).relu().mean((2, 3)))

    torch.manual_seed(0)
    first = Plugin().eval()
    int8._EXPORTED.clear()
    qfirst, _ = quantize(first, "int8", calibration)  # captured and cached
    for other in (Plugin(negate=True), Plugin(offset=3.0)):
        other.load_state_dict(first.state_dict())
        qother, _ = quantize(other.eval(), "int8", calibration)
        with torch.no_grad():
            expected = other(calibration)
            assert torch.allclose(qother(calibration), expected, atol=0.1 * expected.abs().max())
            assert not torch.allclose(qother(calibration), qfirst(calibration), atol=0.1 * expected.abs().max())


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

    # fp8: each quantized layer's static input scale is the max |input| the fp32 model saw there, / 448
    qmodel, _ = quantize(model, "fp8_e4m3", calibration)
    names = [name for name, m in qmodel.named_modules() if isinstance(m, QuantizedLayer)]
    seen = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, max(seen.get(name, 0.0), args[0].abs().max().item()))
        )
        for name in names
    ]
    with torch.no_grad():
        model(calibration)
    for hook in hooks:
        hook.remove()
    for name in names:
        assert qmodel.get_submodule(name).input_scale.item() == pytest.approx(seen[name] / 448)


def test_inapplicable_models_fail_the_cell_with_a_reason(calibration):
    no_weights = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for mode in (*GRID_MODES, "int8"):
        with pytest.raises(CellError, match="Conv2d and Linear layers, and this model has none"):
            quantize(no_weights, mode, calibration)
    # fp8 and int4 apply to layers a low-precision GEMM can run (channels multiples of 16): here, none
    unaligned = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    unaligned(calibration[:2])
    for mode in ("int4_weight", "fp8_e4m3", "fp8_e5m2"):
        with pytest.raises(CellError, match="multiples of 16"):
            quantize(unaligned, mode, calibration)

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


def test_fp16_emulation_equals_a_true_fp16_forward(trained, digits):
    """Tolerance: fp16 rounding. Every layer, fed the same fp16 input, gives the true fp16 result or a
    neighbouring fp16 value: both sum in fp32, in different orders, which moves a rounding now and then (and,
    where a sum cancels to nearly 0, leaves an error below 1/64 ulp of the layer's largest output). End to
    end, those flips accumulate over the depth; in units of u = 2^-10 × the largest logit (≥ its fp16 ulp),
    measured: up to 1 u for small_cnn, 2.5 u for resnet18 (an fp32 forward: 1.5 u, 4.1 u). Asserted: within
    4 u, no prediction changed, and many logits bit-equal to fp16's (97% and 28%; fp32's: 0% and 0.02%)."""
    arch, model, _ = trained
    emulated, _ = quantize(model, "fp16", None)
    true_fp16 = copy.deepcopy(model).half()  # CPU fp16 kernels: slow, but what fp16 computes
    x = normalize(digits.test_x, digits.mean, digits.std)

    layer_io = {}  # copies: in-place ReLUs and residual adds later overwrite these tensors
    hooks = [
        m.register_forward_hook(lambda _m, a, out, name=name: layer_io.__setitem__(name, (a[0].clone(), out.clone())))
        for name, m in true_fp16.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
    ]
    with torch.inference_mode():
        reference = true_fp16(x.half()).float()
        for hook in hooks:
            hook.remove()
        logits = emulated(x)
        for name, (layer_input, layer_output) in layer_io.items():
            with RoundToFp16():
                out = emulated.model.get_submodule(name)(layer_input.float())
            true_out = layer_output.float()
            tolerance = torch.maximum(_fp16_ulp(true_out.abs()), _fp16_ulp(true_out.abs().max()) / 64)
            assert ((out - true_out).abs() <= tolerance).all(), f"{arch} {name}: more than one fp16 ulp off"
            assert (out == true_out).float().mean() > 0.99, f"{arch} {name}: not bit-equal to fp16"

    assert logits.dtype == torch.float32 and torch.equal(logits, logits.half().float()), "logits are not fp16 values"
    largest = reference.abs().amax(1, keepdim=True)  # one fp16 ulp of it is at most largest · 2^-10
    assert ((logits - reference).abs() <= 4 * FP16_EPS * largest).all()
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    with torch.inference_mode():  # and not fp32 in disguise
        assert (model(x) == reference).float().mean() < 0.01 and (logits == reference).float().mean() > 0.2


@pytest.mark.parametrize("mode", GRID_MODES)
def test_grid_weights_are_decoded_once_with_the_numerics_of_decoding_per_forward(
    mode, trained, digits, calibration, monkeypatch
):
    arch, model, _ = trained
    impl = QUANT_MODES.get(mode)
    qmodel, _ = quantize(model, mode, calibration)
    decodes = []
    real_decode = layers.decode_weight
    monkeypatch.setattr(layers, "decode_weight", lambda *args: decodes.append(1) or real_decode(*args))
    logits = predict(qmodel, digits.test_x, digits.mean, digits.std)
    assert not decodes, "a forward decoded the weights again"

    # the code this replaced: per-output-channel scale = amax / qmax, codes decoded on every forward
    for name, weight in _weights(model).items():
        qlayer = qmodel.get_submodule(name)
        if not impl.applies_to(weight):
            assert torch.equal(qlayer.weight, weight), "a layer the mode does not apply to changed"
            continue
        amax = weight.detach().abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
        scale = (amax / impl.grid.qmax).view(-1, *[1] * (weight.dim() - 1))
        old_codes = impl.grid.encode(weight.detach() / scale)
        assert torch.equal(qlayer.qweight.flatten(), old_codes.flatten())
        assert torch.equal(qlayer.weight, impl.grid.decode(old_codes, weight.shape) * scale)

    # the decoded copy is not stored; restore loads codes and scales and decodes them again: same logits
    state = impl.state_dict(qmodel)
    assert not any(f"{name}.weight" in state for name, m in qmodel.named_modules() if isinstance(m, QuantizedLayer))
    restored = impl.restore(create_model(arch, 1, 10).eval(), state)
    assert torch.equal(predict(restored, digits.test_x, digits.mean, digits.std), logits)


@pytest.mark.parametrize("mode", ["fp32", "fp16", "bf16", *GRID_MODES])
def test_quantize_weight_is_the_weight_the_mode_computes_with(mode, trained, calibration):
    arch, model, _ = trained
    impl = QUANT_MODES.get(mode)
    qmodel, _ = quantize(model, mode, calibration)
    inner = qmodel.model if mode in ("fp16", "bf16") else qmodel  # the cast modes wrap the model
    for name, weight in _weights(model).items():
        effective = inner.get_submodule(name).weight.float()
        assert torch.equal(impl.quantize_weight(weight), effective), f"{arch} {mode} {name}"
    if mode != "fp32":
        assert any(not torch.equal(impl.quantize_weight(w), w) for w in _weights(model).values())


def _batchnorm_scale(model: nn.Module) -> dict[str, torch.Tensor]:
    """For each conv followed by a BatchNorm, the per-channel factor k that folding multiplies it by (as PT2E
    folds: bn.weight / sqrt(running_var + eps)); 1 for the other layers."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    factors = {name: torch.ones(w.shape[0]) for name, w in _weights(model).items()}
    for node in graph.nodes:
        users = list(node.users)
        if node.op == "call_module" and len(users) == 1 and users[0].op == "call_module":
            bn = modules[users[0].target]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(modules[node.target], nn.Conv2d):
                factors[node.target] = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return factors


def test_int8_quantize_weight_is_the_converted_graphs_weight_up_to_batchnorm_folding(trained, calibration):
    """The converted graph holds int8 codes of the BN-folded weights k_c · W[c], with their own per-channel
    scales: folding rescales each output channel, so quantize_weight(W)[c] · k_c is the graph's weight, but
    for the exceptions `Int8.quantize_weight` names (the scale floor, ±128, exact ties)."""
    arch, model, _ = trained
    impl = QUANT_MODES.get("int8")
    qmodel, _ = quantize(model, "int8", calibration)
    graph, ops = qmodel.graph_module, torch.ops.quantized_decomposed
    dequantized = [  # the weights the graph's convs and linears read, in graph order = the model's order
        ops.dequantize_per_channel(*[graph.get_buffer(a.target) if isinstance(a, torch.fx.Node) else a for a in n.args])
        for n in graph.graph.nodes
        if n.target == ops.dequantize_per_channel.default
    ]
    weights, factors = _weights(model), _batchnorm_scale(model)
    assert len(dequantized) == len(weights) and any((k != 1).any() for k in factors.values())

    mismatched = 0
    for (name, weight), graph_weight in zip(weights.items(), dequantized, strict=True):
        k = factors[name].view(-1, *[1] * (weight.dim() - 1))
        close = torch.isclose(impl.quantize_weight(weight) * k, graph_weight, rtol=1e-5, atol=1e-8)
        amax = weight.detach().abs().flatten(1).amax(1).view_as(k)
        ratio = weight.detach() / torch.maximum(amax / 127.5, torch.tensor(2.0**-12))
        floored = (amax / 127.5 < 2**-12) | (amax * k.abs() / 127.5 < 2**-12)
        explained = floored | (ratio.abs() >= 127) | ((ratio - ratio.floor() - 0.5).abs() < 1e-3)
        assert (close | explained).all(), f"{arch} {name}: codes differ from the graph's outside the exceptions"
        mismatched += int((~close).sum())
    assert mismatched <= 0.01 * sum(w.numel() for w in weights.values())


def test_int8_weight_grid_is_torchaos_observer_symmetric_per_channel():
    """The brief's formula against torchao's observer and ops: scale = max(amax / 127.5, 2^-12) per output
    channel (the floor is the X86 config's eps), code = clamp(round(w * (1 / scale)), -128, 127)."""
    impl = QUANT_MODES.get("int8")
    weight = torch.randn(6, 4, 3, 3) * torch.tensor([1.0, 0.1, 0.02, 3.0, 1e-3, 0.5]).view(-1, 1, 1, 1)
    scale = torch.maximum(weight.abs().flatten(1).amax(1) / 127.5, torch.tensor(2.0**-12)).view(-1, 1, 1, 1)
    assert torch.equal(
        impl.quantize_weight(weight), torch.clamp(torch.round(weight * (1.0 / scale)), -128, 127) * scale
    )


def test_aligned_layers_are_the_ones_low_precision_gemms_run():
    assert aligned(torch.empty(32, 64, 3, 3)) and aligned(torch.empty(16, 512))
    assert not aligned(torch.empty(32, 1, 3, 3))  # the image-facing conv
    assert not aligned(torch.empty(10, 512))  # the classifier
    assert not aligned(torch.empty(96, 1, 3, 3))  # a depthwise conv


def test_int8_compiled_forward_makes_the_eager_graphs_predictions(digits, calibration):
    torch.manual_seed(0)  # one architecture is enough for the compiled path (~8 s per compile)
    model, _ = train(create_model("small_cnn", 1, 10), digits, RECIPES["small_cnn"], seed=0)
    qmodel, _ = quantize(model, "int8", calibration)
    x = normalize(digits.test_x, digits.mean, digits.std).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        # 450 images of 8x8 run eagerly in a fraction of a second, where compiling takes seconds; 10^8 do not
        assert inference_forward(qmodel, x[:64], len(x)) is qmodel
        forward = inference_forward(qmodel, x[:64], 10**8)
        assert forward is not qmodel, "int8 did not compile on this x86 CPU"
        compiled = torch.cat([forward(x[i : i + 64]) for i in range(0, len(x), 64)])
        eager = qmodel(x)
    assert torch.equal(compiled.argmax(1), eager.argmax(1))
    assert (compiled - eager).abs().max() < 0.05 * eager.abs().max()
    assert F.kl_div(compiled.log_softmax(1), eager.log_softmax(1), log_target=True, reduction="batchmean") < 1e-3
