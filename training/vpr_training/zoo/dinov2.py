"""DINOv2 ViT/14 backbone in the state-dict layout of the official torch.hub models, built without torch.hub.

Source of the layout and of the computation: facebookresearch/dinov2, ``dinov2/models/vision_transformer.py``
(``DinoVisionTransformer``: ``prepare_tokens_with_masks``, ``interpolate_pos_encoding``), ``dinov2/layers/``
(``block.py``, ``attention.py``, ``mlp.py``, ``swiglu_ffn.py``, ``layer_scale.py``) and ``dinov2/hub/backbones.py``
(the hub models: image size 518, patch 14, LayerScale, ``mlp`` FFN but ``swiglufused`` for ViT-g,
``interpolate_offset`` 0.1, no antialiasing). A hub checkpoint (``dinov2_vitb14_pretrain.pth``) has these keys:

=====================================  =====================  ==============================================
key                                    shape                  what
=====================================  =====================  ==============================================
``cls_token``                          (1, 1, D)              class token
``pos_embed``                          (1, 1 + M*M, D)        position embeddings of the class token and of an
                                                              M x M patch grid (M = 518 / 14 = 37)
``mask_token``                         (1, D)                 used in training only (read if present)
``register_tokens``                    (1, R, D)              ``*_reg`` models only (refused here, see below)
``patch_embed.proj.weight / .bias``    (D, 3, 14, 14) / (D,)  patch embedding as a stride-14 convolution
``blocks.N.norm1.weight / .bias``      (D,)                   pre-attention LayerNorm (eps 1e-6)
``blocks.N.attn.qkv.weight / .bias``   (3D, D) / (3D,)        q, k, v of D / 64 heads of 64 channels
``blocks.N.attn.proj.weight / .bias``  (D, D) / (D,)          attention output projection
``blocks.N.ls1.gamma``                 (D,)                   LayerScale of the attention branch
``blocks.N.norm2.weight / .bias``      (D,)                   pre-FFN LayerNorm
``blocks.N.mlp.fc1 / .fc2``            (4D, D) / (D, 4D)      GELU MLP (ViT-S/B/L)
``blocks.N.mlp.w12 / .w3``             (2F, D) / (D, F)       SwiGLU FFN (ViT-g, F = 4096)
``blocks.N.ls2.gamma``                 (D,)                   LayerScale of the FFN branch
``norm.weight / .bias``                (D,)                   final LayerNorm
=====================================  =====================  ==============================================

The number of heads is not in the file: every DINOv2 model has 64-channel heads (ViT-S 6, B 12, L 16, g 24).

Position embeddings for other input sizes (the official ``interpolate_pos_encoding``): the M x M grid is resized
bicubically (PyTorch's ``upsample_bicubic2d``: Keys' cubic convolution, A = -0.75, half-pixel centres, borders
clamped) with the scale factor ``(n + 0.1) / M`` for n output patches per side; at exactly M x M patches the
embeddings are used as stored. :func:`bicubic_matrix` writes that resize as an (n, M) matrix computed from the
input's size inside the graph, so one exported ONNX file accepts every input whose sides are multiples of 14
(a traced ``F.interpolate`` would freeze the scale factor of the tracing example). Register-token models
(``dinov2_vit*14_reg``) interpolate with antialiasing and no offset; none of the VPR models imported here uses
them, so their checkpoints are refused with a clear error rather than run slightly differently.

The module takes ImageNet-normalised images (every DINOv2-based VPR model here is trained with ``ToTensor`` +
``Normalize(ImageNet mean, std)``); the formats wrap it in :class:`vpr_training.zoo.registry.NormalisedInput`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.errors import InputError
from vpr_training.zoo import convert as zoo_convert
from vpr_training.zoo.registry import LayoutError, get_format

PATCH_SIZE = 14
HEAD_DIM = 64
LAYER_NORM_EPS = 1e-6
#: ``interpolate_offset`` of the hub models (a historical work-around kept for backward compatibility upstream).
INTERPOLATE_OFFSET = 0.1
#: Keys' cubic convolution parameter used by PyTorch's bicubic upsampling.
CUBIC_A = -0.75


class InputSizeError(InputError):
    """An input size the ViT cannot take (sides must be multiples of the patch size)."""


def check_input_size(height: int, width: int, what: str = "input size") -> None:
    """Raise :class:`InputSizeError` unless ``height`` and ``width`` are positive multiples of 14."""
    if height <= 0 or width <= 0 or height % PATCH_SIZE or width % PATCH_SIZE:
        def near(n: int) -> str:
            lower = max(PATCH_SIZE, n // PATCH_SIZE * PATCH_SIZE)
            return f"{lower} or {lower + PATCH_SIZE}" if n % PATCH_SIZE else str(n)

        raise InputSizeError(f"{what} {width}x{height} (WxH): a DINOv2 ViT/14 takes sides that are multiples of "
                             f"{PATCH_SIZE} pixels (e.g. width {near(width)}, height {near(height)})")


@dataclass(frozen=True)
class ViTSpec:
    """The shape of a DINOv2 ViT/14, as read from its state dict (:meth:`from_state_dict`)."""

    embed_dim: int
    depth: int
    pos_grid: int          # M: pos_embed covers an M x M patch grid (37 for the hub's 518-pixel training size)
    ffn: str               # "mlp" (GELU MLP) or "swiglu" (ViT-g)
    ffn_hidden: int        # hidden width of the FFN (4D for "mlp", F with w12 = 2F rows for "swiglu")
    mask_token: bool = True  # the hub models have one (training only); re-implementations may drop it

    @property
    def num_heads(self) -> int:
        return self.embed_dim // HEAD_DIM

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str = "") -> ViTSpec:
        """Read the spec from the keys and shapes under ``prefix`` (e.g. ``backbone.model.``)."""
        try:
            if f"{prefix}register_tokens" in state:
                raise LayoutError(f"the DINOv2 weights under {prefix or 'the top level'!r} have register tokens "
                                 "(a dinov2_vit*14_reg model): not supported (their antialiased position-embedding "
                                 "interpolation differs); use the plain dinov2_vit*14 weights")
            d = int(state[f"{prefix}cls_token"].shape[-1])
            n_pos = int(state[f"{prefix}pos_embed"].shape[1]) - 1
            m = round(n_pos ** 0.5)
            if m * m != n_pos:
                raise LayoutError(f"{prefix}pos_embed covers {n_pos} patches, not a square grid")
            depth = 1 + max(int(k[len(prefix) + 7:].split(".")[0]) for k in state
                            if k.startswith(f"{prefix}blocks."))
            if f"{prefix}blocks.0.mlp.w12.weight" in state:
                ffn, hidden = "swiglu", int(state[f"{prefix}blocks.0.mlp.w12.weight"].shape[0]) // 2
            else:
                ffn, hidden = "mlp", int(state[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0])
            if tuple(state[f"{prefix}patch_embed.proj.weight"].shape[1:]) != (3, PATCH_SIZE, PATCH_SIZE):
                raise LayoutError(f"{prefix}patch_embed.proj.weight has shape "
                                 f"{tuple(state[f'{prefix}patch_embed.proj.weight'].shape)}, expected a 14x14 "
                                 "RGB patch embedding (D, 3, 14, 14)")
        except (KeyError, ValueError) as exc:
            if isinstance(exc, LayoutError):
                raise
            raise LayoutError(f"not a DINOv2 ViT/14 state dict under {prefix or 'the top level'!r}: missing or "
                             f"malformed {exc}") from None
        if d % HEAD_DIM:
            raise LayoutError(f"{prefix}cls_token has {d} channels, not a multiple of DINOv2's {HEAD_DIM}-channel "
                              "heads")
        return cls(embed_dim=d, depth=depth, pos_grid=m, ffn=ffn, ffn_hidden=hidden,
                   mask_token=f"{prefix}mask_token" in state)


#: The torch.hub models (dinov2/hub/backbones.py) and a shallow one for tests (2 blocks, 128 channels, 6x6 grid).
HUB_SPECS: dict[str, ViTSpec] = {
    "vits14": ViTSpec(384, 12, 37, "mlp", 1536),
    "vitb14": ViTSpec(768, 12, 37, "mlp", 3072),
    "vitl14": ViTSpec(1024, 24, 37, "mlp", 4096),
    "vitg14": ViTSpec(1536, 40, 37, "swiglu", 4096),
}
SHALLOW_SPEC = ViTSpec(128, 2, 6, "mlp", 512)


def _cubic_weight(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel (A = -0.75) at distances in [0, 2)."""
    a = CUBIC_A
    near = ((a + 2.0) * distance - (a + 3.0)) * distance * distance + 1.0
    far = ((a * distance - 5.0 * a) * distance + 8.0 * a) * distance - 4.0 * a
    return torch.where(distance <= 1.0, near, far)


def bicubic_matrix(n_out: torch.Tensor | int, m: int, offset: float = INTERPOLATE_OFFSET) -> torch.Tensor:
    """(n_out, m) matrix R with ``R @ g`` = PyTorch's bicubic resize of ``g`` (m rows) by scale ``(n_out + offset)/m``.

    Each output row i samples the source at ``s = (i + 0.5) * m / (n_out + offset) - 0.5``; its four taps
    ``floor(s) - 1 .. floor(s) + 2`` (clamped into [0, m - 1], so border taps add up) get the cubic weights of
    their distance to ``s``. ``n_out`` may be a traced size, so an exported graph builds R for its input.
    """
    # The source scale is computed in double and used in float, as in ATen's area_pixel_compute_scale.
    count = torch.as_tensor(n_out).to(torch.float64)
    scale = (torch.as_tensor(float(m), dtype=torch.float64) / (count + offset)).to(torch.float32)
    source = (torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5
    base = torch.floor(source)
    t = source - base
    columns = torch.arange(m, dtype=torch.float32)
    matrix = torch.zeros(())
    for tap, distance in ((-1, t + 1.0), (0, t), (1, 1.0 - t), (2, 2.0 - t)):
        index = torch.clamp(base + tap, 0.0, float(m - 1))
        matrix = matrix + _cubic_weight(distance)[:, None] * (index[:, None] == columns[None, :]).to(torch.float32)
    return matrix


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (``attn.qkv``, ``attn.proj``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> q, k, v stacked as (3, B, heads, N, 64)."""
        b, n, d = x.shape
        return self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.split_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """``w3(silu(x1) * x2)`` with ``[x1, x2] = w12(x)`` (dinov2/layers/swiglu_ffn.py)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.attn = Attention(d)
        self.ls1 = LayerScale(d)
        self.norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.mlp: nn.Module = Mlp(d, spec.ffn_hidden) if spec.ffn == "mlp" else SwiGLU(d, spec.ffn_hidden)
        self.ls2 = LayerScale(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


@dataclass
class ViTTokens:
    """Tokens of a forward pass. Shape: ``cls`` (B, D); ``patches`` (B, D, h, w) with h, w = H / 14, W / 14."""

    cls: torch.Tensor
    patches: torch.Tensor


class DinoV2(nn.Module):
    """DINOv2 ViT/14 with the hub state-dict layout (module docstring); input already ImageNet-normalised.

    Example:
        >>> vit = DinoV2(SHALLOW_SPEC).eval()
        >>> out = vit.tokens(torch.zeros(1, 3, 56, 84))
        >>> tuple(out.patches.shape), tuple(out.cls.shape)
        ((1, 128, 4, 6), (1, 128))
    """

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid ** 2, d))
        if spec.mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def position_embeddings(self, h: torch.Tensor | int, w: torch.Tensor | int) -> torch.Tensor:
        """(1, 1 + h*w, D) position embeddings for an h x w patch grid (official ``interpolate_pos_encoding``).

        The stored grid is used as is at exactly M x M patches (the official shortcut), else resized bicubically.
        """
        m, d = self.spec.pos_grid, self.spec.embed_dim
        grid = self.pos_embed[0, 1:].reshape(m, m, d)
        # Traced sizes stay tensors (the graph computes the resize for its input); eager ones stay ints.
        h, w = (torch.as_tensor(h), torch.as_tensor(w)) if torch.jit.is_tracing() else (int(h), int(w))
        native = torch.as_tensor(h == m) & torch.as_tensor(w == m)

        def resize(n: torch.Tensor) -> torch.Tensor:
            keep = (torch.arange(n)[:, None] == torch.arange(m)[None, :]).to(torch.float32)  # identity if n == m
            return torch.where(native, keep, bicubic_matrix(n, m))

        patches = torch.einsum("hm,mnd,wn->hwd", resize(h), grid, resize(w)).reshape(1, -1, d)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1 + h*w, D) class + patch tokens with position embeddings."""
        if not torch.jit.is_tracing():
            check_input_size(int(x.shape[2]), int(x.shape[3]))
        patches = self.patch_embed.proj(x)
        h, w = patches.shape[2], patches.shape[3]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + self.position_embeddings(h, w)

    def run_blocks(self, x: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        """Tokens after blocks ``0 .. stop - 1`` (all blocks by default), before the final norm."""
        for block in self.blocks[:stop]:
            x = block(x)
        return x

    @staticmethod
    def split(tokens: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor) -> ViTTokens:
        """(B, 1 + h*w, D) tokens of an H x W image -> class token and (B, D, h, w) patch map."""
        b, _, d = tokens.shape
        patches = tokens[:, 1:].reshape(b, height // PATCH_SIZE, width // PATCH_SIZE, d).permute(0, 3, 1, 2)
        return ViTTokens(cls=tokens[:, 0], patches=patches)

    def tokens(self, x: torch.Tensor, norm: bool = True) -> ViTTokens:
        """Class token and patch map after the last block (and the final LayerNorm when ``norm``)."""
        out = self.run_blocks(self.prepare_tokens(x))
        return self.split(self.norm(out) if norm else out, x.shape[2], x.shape[3])


def random_vit_state(spec: ViTSpec, generator: torch.Generator, prefix: str = "") -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of the hub layout (under ``prefix``).

    Not the training initialisation: LayerNorm, LayerScale and biases get random values too (a swapped or
    ignored weight shows up in parity checks), and scales keep activations in a trained model's range.
    """
    model = DinoV2(spec)
    state = {}
    for name, tensor in model.state_dict().items():
        shape = tensor.shape
        if name.endswith("gamma"):
            value = 0.5 + 0.5 * torch.rand(shape, generator=generator)
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        elif name.endswith("bias"):
            value = 0.05 * torch.randn(shape, generator=generator)
        elif name in ("cls_token", "pos_embed", "mask_token"):
            value = 0.5 * torch.randn(shape, generator=generator)
        else:  # weights: fan-in scaled so that each layer keeps unit variance
            fan_in = shape[1:].numel()
            value = torch.randn(shape, generator=generator) / fan_in ** 0.5
        state[prefix + name] = value.contiguous()
    return state


# ---- what the DINOv2-based formats share ----------------------------------------------------------------------

#: The input-size rule of every DINOv2-based export (the card's ``input_size_rule``).
SIZE_RULE = ("any height and width that are multiples of 14 (the patch size; other sizes are refused with a clear "
             "error): the position embeddings are interpolated inside the graph for the input's patch grid "
             "(bicubic, as the official interpolate_pos_encoding), so one export serves every map size")
_VIT_NAMES = {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}


def vit_name(spec: ViTSpec) -> str:
    """'DINOv2 ViT-B/14' for the hub sizes, else the width and depth (shallow test models)."""
    name = _VIT_NAMES.get(spec.embed_dim) if spec.depth in (12, 24, 40) else None
    return f"DINOv2 {name}" if name else f"DINOv2 ViT/14 ({spec.embed_dim} channels, {spec.depth} blocks)"


def vit_details(spec: ViTSpec) -> dict[str, object]:
    """The backbone's facts for the model card's ``source`` section."""
    return {"backbone": vit_name(spec), "embed_dim": spec.embed_dim, "blocks": spec.depth, "heads": spec.num_heads,
            "ffn": spec.ffn, "position_grid": [spec.pos_grid, spec.pos_grid],
            "position_interpolation": f"bicubic, scale (n + {INTERPOLATE_OFFSET}) / {spec.pos_grid}, in the graph"}


def require_size_multiple(card_path: Path) -> None:
    """Mark the card at ``card_path`` so that encoders refuse inputs whose sides are not multiples of its
    ``input.size_multiple`` (``input.size_multiple_required``; checked by vpr_ros' OnnxEncoder): a ViT/14 graph
    would otherwise silently drop the pixels beyond the last whole patch."""
    card = ModelCard.load(card_path)
    raw = card.to_dict()
    raw["input"]["size_multiple_required"] = True
    write_model_card(card_path, ModelCard.from_dict(raw, where=str(card_path)))


def size_checked_convert(format_name: str) -> Callable[[Path, Path, str, Sequence[np.ndarray]], Path]:
    """An ``ImportFormat.convert`` hook: the shared conversion of :mod:`vpr_training.zoo.convert`, then, for a
    ViT/14 export (size multiple 14; not e.g. BoQ's ResNet-50 release, which takes any size), the card marked
    with :func:`require_size_multiple`."""
    def convert(checkpoint: Path, out_dir: Path, model_id: str, check_images: Sequence[np.ndarray]) -> Path:
        fmt = dataclasses.replace(get_format(format_name), convert=None)
        onnx_path = zoo_convert.convert(fmt, checkpoint, out_dir, model_id, check_images=check_images)
        card_path = onnx_path.with_suffix(".yaml")
        if ModelCard.load(card_path).raw["input"]["size_multiple"] == PATCH_SIZE:
            require_size_multiple(card_path)
        return onnx_path

    return convert
