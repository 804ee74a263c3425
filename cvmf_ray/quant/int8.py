"""`int8`: static post-training W8A8 with torchao's PT2E flow and the X86 inductor quantizer.

torch.export (strict, dynamic batch) → `prepare_pt2e` (folds BatchNorm into the convs, inserts observers) →
calibration forwards on retain-train images (evaluation transform) → `convert_pt2e`. Weights: int8,
symmetric, per output channel; activations: uint8, affine, per tensor, histogram-calibrated. The result is
a graph of quantize/dequantize ops around fp32 convs: the int8 arithmetic, runnable in eager PyTorch on any
device. Evaluation on an x86 CPU runs it compiled where that pays (`_layers.Int8Model.inference_forward`):
`torch.compile` with inductor freezing lowers the same graph to oneDNN int8 kernels (a Fashion-MNIST evaluate
cell: 3.2x faster than with the eager graph, scripts/bench_eval.py), with the eager graph's predictions but for
near-ties (scripts/bench_quant.py's `int8 eager` row; tests/test_quant.py). Compiling costs seconds (2 s for
small_cnn in a fresh process), so sets below `_layers.COMPILE_FROM_VALUES` input values (the embedded digits) run
eagerly.

Strict export because torchvision's BasicBlock calls one `self.relu` module twice: the default non-strict
export maps both calls to one module and `prepare_pt2e` fails ("Input partition has more than one output
node", pytorch/ao#4478).

Saved state: the tensors the converted graph reads (int8 weights, weight scales and zero points, folded
biases), the activation scales and zero points (literals in the graph) and the input shape; `restore`
rebuilds the same graph from a fresh model and writes these values back into it.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections import OrderedDict

from cvmf_ray.errors import CellError, first_line
from cvmf_ray.lazy import LazyModule, nn, torch
from cvmf_ray.quant import QuantMode, register_quant, run_calibration

_layers = LazyModule("cvmf_ray.quant._layers")  # Int8Model: a torch module

_EXPORTED: OrderedDict[tuple, torch.fx.GraphModule] = OrderedDict()  # see `exported`
EXPORTS_KEPT = 2  # a process quantizes one or two architectures at a time; each entry holds one model's weights


def x86_config():
    """torchao's default X86 inductor config: uint8 per-tensor activations, int8 per-channel symmetric weights."""
    # torchao is imported here, not at the top: every Ray worker imports this package, few quantize to int8
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    return get_default_x86_inductor_quantization_config()


def prepare(model: nn.Module, calibration: torch.Tensor) -> torch.fx.GraphModule:
    """Export, fold BatchNorm, insert observers and calibrate: everything before `convert_pt2e`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    try:
        prepared = prepare_pt2e(exported(model, calibration), X86InductorQuantizer().set_global(x86_config()))
    except Exception as err:  # a failure to capture or annotate is a property of the architecture: same every time
        reason = first_line(err)
        raise CellError(f"int8 needs a model torch.export can capture and PT2E can annotate: {reason}") from err
    run_calibration(prepared, calibration)
    return prepared


def exported(model: nn.Module, images: torch.Tensor) -> torch.fx.GraphModule:
    """`model` captured by torch.export (strict, dynamic batch) for inputs shaped like `images`, holding its weights.

    Capturing takes ~0.3 s warm and yields the same graph for every model of one architecture, so a process
    keeps the last graphs it captured and hands out copies with the model's own weights loaded (~4 ms). A copy
    is used only if it computes what the model computes on a fixed input: a plug-in whose forward branches on a
    plain attribute, or holds a tensor that is not in its state_dict, is captured afresh.
    """
    example = torch.randn(2, *images.shape[1:], generator=torch.Generator().manual_seed(0)).to(images.device)
    key = (type(model).__module__, type(model).__qualname__, repr(model), example.shape[1:], str(example.device))
    if key in _EXPORTED:
        _EXPORTED.move_to_end(key)
        graph = _with_weights(copy.deepcopy(_EXPORTED[key]), model)
        with torch.no_grad():
            if graph is not None and torch.allclose(graph(example), model(example), rtol=1e-5, atol=1e-6):
                return graph
    # batch ≥ 2 in the example: sizes 0 and 1 get specialised
    dynamic = ({0: torch.export.Dim("batch")},)
    _EXPORTED[key] = torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=True).module()
    while len(_EXPORTED) > EXPORTS_KEPT:
        _EXPORTED.popitem(last=False)
    return copy.deepcopy(_EXPORTED[key])


def _with_weights(graph: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule | None:
    """`graph` holding `model`'s parameters and buffers, or None if their names do not match."""
    state, wanted = model.state_dict(), graph.state_dict()
    if not wanted.keys() <= state.keys():  # a tensor the graph holds that the model's state does not name
        return None
    graph.load_state_dict({name: state[name] for name in wanted})  # an eval graph skips BN's batch counters
    return graph


def _unobserved(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`prepared` with its activation observers reset to having seen nothing, for a graph whose values `restore`
    replaces: converting then skips their histogram range search (~0.04 s each, most of a restore's time)."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    for observer in prepared.modules():
        if isinstance(observer, HistogramObserver):
            observer.min_val.fill_(float("inf"))
            observer.max_val.fill_(float("-inf"))
    return prepared


def convert(prepared: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = convert_pt2e(prepared)
    dequantize_weight = torch.ops.quantized_decomposed.dequantize_per_channel.default
    if not any(node.target == dequantize_weight for node in graph.graph.nodes):
        raise CellError(f"int8 {_layers.NO_LAYERS}")  # PT2E annotated nothing: the graph would be the fp32 model
    used = set(_graph_tensors(graph))
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:  # fp32 weights that constant folding replaced by int8 copies
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner), attr)
    return _layers.Int8Model(graph, input_shape)


class Int8(QuantMode):
    name = "int8"
    weight_bits = 8

    def quantize_weight(self, weight):
        """The weight grid of X86InductorQuantizer's default config, computed by its own observer and ops: int8
        per output channel, symmetric, range [-128, 127], scale = max(amax / 127.5, 2^-12) (the observer's eps).

        PT2E quantizes the BatchNorm-folded weight; folding multiplies each output channel by a constant k,
        which the per-channel scale absorbs, so these are the same codes (times sign(k)), except in a channel
        where amax or k·amax falls below 127.5 · 2^-12 ≈ 0.031 (the scale floor), at exact rounding ties,
        and at -128 (reachable on one side only) when k < 0.
        """
        # how prepare_pt2e builds the observer from the config's weight spec
        from torchao.quantization.pt2e.prepare import _create_obs_or_fq_from_qspec

        spec = x86_config().weight
        observer = _create_obs_or_fq_from_qspec(spec, {}, is_qat=False)
        weight = weight.detach().float()
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        args = (scale, zero_point, spec.ch_axis, spec.quant_min, spec.quant_max, spec.dtype)
        ops = torch.ops.quantized_decomposed
        return ops.dequantize_per_channel(ops.quantize_per_channel(weight, *args), *args)

    def quantize(self, model, calibration):
        return convert(prepare(model, calibration), tuple(calibration.shape[1:]))

    def restore(self, model, state):
        shape = tuple(state[_layers.INPUT_SHAPE].tolist())
        with warnings.catch_warnings():  # each observer _unobserved reset warns that it has observed nothing
            warnings.filterwarnings("ignore", "must run observer before calling calculate_qparams")
            qmodel = convert(_unobserved(prepare(model, torch.zeros(2, *shape))), shape)  # placeholder values
        tensors = _graph_tensors(qmodel.graph_module)
        activations = _activation_nodes(qmodel.graph_module)
        if (
            set(state) != {*tensors, _layers.INPUT_SHAPE, _layers.ACT_SCALE, _layers.ACT_ZERO_POINT}
            or any((t.shape, t.dtype) != (state[name].shape, state[name].dtype) for name, t in tensors.items())
            or len(activations) != len(state[_layers.ACT_SCALE])
        ):
            raise CellError("the saved int8 state does not match this architecture's quantized graph")
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.copy_(state[name])
        qparams = zip(state[_layers.ACT_SCALE].tolist(), state[_layers.ACT_ZERO_POINT].tolist(), strict=True)
        for node, (scale, zero_point) in zip(activations, qparams, strict=True):
            node.args = (node.args[0], scale, zero_point, *node.args[3:])
        qmodel.graph_module.recompile()
        return qmodel

    def state_dict(self, qmodel):
        activations = _activation_nodes(qmodel.graph_module)
        return {
            **{name: t.detach().contiguous() for name, t in _graph_tensors(qmodel.graph_module).items()},
            _layers.INPUT_SHAPE: getattr(qmodel, _layers.INPUT_SHAPE),
            _layers.ACT_SCALE: torch.tensor([n.args[1] for n in activations], dtype=torch.float64),
            _layers.ACT_ZERO_POINT: torch.tensor([n.args[2] for n in activations], dtype=torch.int64),
        }


def _graph_tensors(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads (its `get_attr` nodes), by qualified name."""
    tensors = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = functools.reduce(getattr, node.target.split("."), gm)
            if isinstance(value, torch.Tensor):
                tensors[node.target] = value
    return tensors


def _activation_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Per-tensor activation (de)quantize nodes, in graph order; their scale and zero point are literals."""
    ops = torch.ops.quantized_decomposed  # registered by torchao's pt2e import in prepare()
    targets = (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)
    return [node for node in gm.graph.nodes if node.op == "call_function" and node.target in targets]


register_quant(Int8())
