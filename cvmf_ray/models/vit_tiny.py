"""vit_tiny: a Compact Convolutional Transformer, CCT-2/3x2 (Hassani et al., Escaping the Big Data Paradigm with
Compact Transformers, arXiv 2104.05704; SHI-Labs/Compact-Transformers), BN-free, for 8-32 px images.

    tokenizer   2 x [Conv 3x3 stride 1 (no bias), ReLU, MaxPool 3x3 stride 2]: 64, then 128 channels
    positions   learnable, one per token of an 8x8 grid
    encoder     2 pre-LN blocks: dim 128, 2 heads, MLP ratio 1 (GELU)
    pooling     LayerNorm, then CCT's sequence pooling (a softmax-weighted mean of the tokens)
    head        Linear(128, classes)

0.28M parameters, the paper's CCT-2/3x2 (89.17% on CIFAR-10 after 200 epochs; ../shared/reference/
where-forgetting-lives.md §5). Only LayerNorm: the model keeps no running statistics.

Attention is written out with plain `nn.Linear` projections (timm/CCT style): torchvision's ViT uses
`nn.MultiheadAttention`, whose qkv weight is a bare Parameter and whose output projection is a
`NonDynamicallyQuantizableLinear`, so quantizers that look for `nn.Linear` leave attention fp32. Here every
quant mode quantizes qkv, the output projection and the MLP (int8 included: PT2E annotates the linears).

Image size: a model is built from (in_channels, num_classes) alone, and `restore` loads a saved state into a
fresh one, so no shape may depend on the image. The positional embedding is an 8x8 grid, the tokens of a 32 px
image after the two 2x pools; an image of h x w tokens reads its top-left corner (28 px: 7x7, 8 px: 2x2).
"""

from __future__ import annotations

import functools

from cvmf_ray.lazy import nn, torch
from cvmf_ray.models import register_model

GRID = 8  # tokens per side of the largest image, 32 px (each MaxPool halves the side)
DIM, HEADS, LAYERS, MLP_RATIO = 128, 2, 2, 1  # CCT-2/3x2
WIDTH = 64  # the tokenizer's first conv (CCT: in_channels -> 64 -> dim)


def _conv_pool(c_in: int, c_out: int) -> list[nn.Module]:
    """One CCT tokenizer stage: the conv keeps the resolution, the pool halves it."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]


class _Attention:
    """Multi-head self-attention, qkv and the output projection plain `nn.Linear`s (CCT: no qkv bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class _Block:
    """A pre-LN transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = _module_class("Attention")(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _CompactTransformer:
    """Conv tokenizer, positional embedding, encoder blocks, sequence pooling, head (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.tokenizer = nn.Sequential(*_conv_pool(in_channels, WIDTH), *_conv_pool(WIDTH, DIM))
        self.positions = nn.Parameter(torch.zeros(1, DIM, GRID, GRID))
        self.blocks = nn.Sequential(*(_module_class("Block")(DIM, HEADS, DIM * MLP_RATIO) for _ in range(LAYERS)))
        self.norm = nn.LayerNorm(DIM)
        self.pool = nn.Linear(DIM, 1)  # sequence pooling: one weight per token
        self.head = nn.Linear(DIM, num_classes)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(images)
        h, w = x.shape[-2:]
        if h > GRID or w > GRID:
            raise ValueError(f"vit_tiny takes images up to 32 px ({GRID}x{GRID} tokens), got {h}x{w} tokens")
        x = self.norm(self.blocks((x + self.positions[:, :, :h, :w]).flatten(2).transpose(1, 2)))
        weights = self.pool(x).softmax(1)  # [N, tokens, 1]
        return self.head((weights.transpose(1, 2) @ x).squeeze(1))


def _init_weights(model: nn.Module) -> None:
    """CCT's initialisation (`TransformerClassifier.init_weight`, `Tokenizer.init_weight`)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    nn.init.trunc_normal_(model.positions, std=0.2)


_BODIES = {"Attention": _Attention, "Block": _Block, "CompactTransformer": _CompactTransformer}


@functools.cache
def _module_class(name: str) -> type:
    """The body `_NAME` above made an `nn.Module` subclass, on first use: a registry entry must not touch torch
    when imported (cvmf_ray/lazy.py)."""
    return type(name, (_BODIES[name], nn.Module), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str) -> type:
    """`vit_tiny.Attention`, `.Block`, `.CompactTransformer` (PEP 562): the classes are module attributes, so
    the models pickle."""
    if name not in _BODIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _module_class(name)


# the last encoder block, the final norm, sequence pooling and the head
@register_model("vit_tiny", batchnorm=False, last_block=(f"blocks.{LAYERS - 1}.", "norm.", "pool.", "head."))
def vit_tiny(in_channels: int, num_classes: int) -> nn.Module:
    return _module_class("CompactTransformer")(in_channels, num_classes)
