"""Learned sequence descriptors: SeqNet trained on frame descriptors of traversals, exported to ONNX.

SeqNet (Garg & Milford, "SeqNet: Learning Descriptors for Sequence-Based Hierarchical Place Recognition",
RA-L 2021, section III-A) turns the global descriptors of ``L`` consecutive frames into one descriptor: a 1-D
convolution over time (``D`` input channels, ``P`` output channels, kernel ``w``), averaged over the ``L - w + 1``
output steps and L2-normalised. It is the learned form of the MSLS thesis' seq2seq AVG pooling (section
4.2.1): with the kernel initialised to ``I / w`` at every tap (:meth:`SeqNet.init_as_average`) its output *is*
the average of the frame descriptors, so training starts from that method and can only move away from it
where the triplet loss pays. Averaging over time throws away the order of the frames, which on a route is
most of what a sequence says; so by default the kernel spans the whole window (``w = L``) with ``P = L x D``
outputs, initialised as the concatenation of the frames (:meth:`SeqNet.init_as_concatenation`: the cosine
of two outputs is then the mean cosine of aligned frames, SeqSLAM at velocity 1 without contrast
enhancement), and training learns which dimensions and frames of the window to trust.

Training uses the frame encoder's descriptors, computed once, so an epoch is a few matrix products: every
query window of a training traversal against every window of another traversal of the same places, with the
nearest true positive and the hardest negatives mined afresh each epoch from the current model (the NetVLAD
weak-supervision rule the frame trainer's miner uses), a triplet margin loss on squared distances
(:mod:`vpr_training.losses`' convention) and early stopping on validation recall@1.

Places come as positions along the route (``TraversalDescriptors.positions``, e.g. the place index of
frame-aligned traversals, or the distance driven): a map window is a positive of a query window when their last
frames are within ``positive_radius``, a negative beyond ``negative_radius``. Windows never cross a gap between
segments (``segments``), so a window is a stretch the robot really drove.

    model, report = train_seqnet(train_pairs, val_pairs, SeqNetConfig(length=10))
    export_seqnet(model, out_dir, "adapted_seqnet", length=10, frame_encoder={...}, check=val_pairs[0])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vpr_ros.config import setting
from vpr_ros.core.files import sha256_file
from vpr_ros.core.sequence_model import SequenceModelCard, write_sequence_card

log = logging.getLogger("vpr_training.seqnet")


@dataclass(frozen=True)
class SeqNetConfig:
    """SeqNet architecture and its training on frame descriptors."""

    length: int = setting(10, "frames per sequence window L", min=1)
    kernel: int = setting(0, "temporal convolution width w (SeqNet's S_L uses w = 5; 0 = the whole window, "
                          "w = L; clamped to L)", min=0)
    output_dim: int = setting(0, "sequence descriptor dimension P (0 = w x the frame descriptor dimension, so "
                              "the model starts as the concatenation of the frames)", min=0)
    epochs: int = setting(60, "training epochs (an epoch: every training query window once)", min=1)
    patience: int = setting(10, "stop after this many epochs without a better validation recall@1", min=1)
    batch_size: int = setting(32, "query windows per step", min=1)
    negatives: int = setting(5, "hardest negatives per query window, mined each epoch", min=1)
    margin: float = setting(0.1, "triplet margin on squared distances of unit descriptors", min=0.0)
    lr: float = setting(1e-3, "Adam learning rate", min=0.0)
    weight_decay: float = setting(1e-4, "Adam weight decay", min=0.0)
    positive_radius: float = setting(1.0, "a map window is a positive when its last frame is within this distance "
                                     "of the query's (position units: places for aligned traversals)", min=0.0)
    negative_radius: float = setting(3.0, "... and a negative beyond this distance", min=0.0)
    seed: int = setting(0, "seed of initialisation and batch order", min=0)

    def __post_init__(self) -> None:
        if self.negative_radius < self.positive_radius:
            raise ValueError("seqnet.negative_radius must be >= seqnet.positive_radius")


@dataclass
class TraversalDescriptors:
    """Frame descriptors of one traversal (or a part of it) with where each frame was along the route.

    Shape:
        descriptors: (N, D) L2-normalised, in driving order; positions: (N,) route coordinate (aligned
        traversals: place index); segments: (N,) int id of the contiguous stretch each frame belongs to.
    """

    descriptors: np.ndarray
    positions: np.ndarray
    segments: np.ndarray

    def window_rows(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ends, rows): frames that end a full window inside their segment, and the window's rows (oldest first).

        Shape:
            returns (M,), (M, length) int64.
        """
        n = len(self.descriptors)
        rows = np.arange(n)[:, None] - np.arange(length - 1, -1, -1)[None, :]
        ok = rows[:, 0] >= 0
        ok[ok] &= self.segments[rows[ok, 0]] == self.segments[np.arange(n)[ok]]
        ends = np.nonzero(ok)[0]
        return ends, rows[ends]


class SeqNet(nn.Module):
    """Temporal convolution over frame descriptors, averaged over time, L2-normalised (module docstring).

    Input ``sequence`` (B, L, D), oldest frame first, with L >= kernel; output (B, P).
    """

    def __init__(self, input_dim: int, output_dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(input_dim, output_dim, kernel_size=kernel)

    def init_as_concatenation(self) -> SeqNet:
        """Weights that make the output, for a window of exactly ``kernel`` frames, the L2-normalised concatenation
        of the frames (output dim = kernel x input dim): the cosine of two such outputs is then the mean cosine
        of aligned frames, i.e. SeqSLAM's score at velocity 1 without contrast enhancement, which training refines."""
        out_dim, in_dim, w = self.conv.weight.shape
        if out_dim != in_dim * w:
            raise ValueError("init_as_concatenation needs output_dim == kernel x input_dim")
        with torch.no_grad():
            weight = torch.zeros(w, in_dim, in_dim, w)
            taps = torch.arange(w)
            weight[taps, :, :, taps] = torch.eye(in_dim)
            self.conv.weight.copy_(weight.reshape(out_dim, in_dim, w))
            self.conv.bias.zero_()
        return self

    def init_as_average(self) -> SeqNet:
        """Weights that make the output the L2-normalised average of the frames (input dim == output dim)."""
        out_dim, in_dim, w = self.conv.weight.shape
        if out_dim != in_dim:
            raise ValueError("init_as_average needs output_dim == input_dim")
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(in_dim)[:, :, None].expand(-1, -1, w) / w)
            self.conv.bias.zero_()
        return self

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        x = self.conv(sequence.transpose(1, 2))  # (B, P, L - w + 1)
        return nn.functional.normalize(x.mean(dim=2), dim=1)


@dataclass
class _Pair:
    """A query traversal's windows against a map traversal's windows (both of the same places)."""

    query: torch.Tensor      # (Mq, L, D)
    database: torch.Tensor   # (Md, L, D)
    positives: np.ndarray    # (Mq, Md) bool
    negatives: np.ndarray    # (Mq, Md) bool


def _pair(query: TraversalDescriptors, database: TraversalDescriptors, length: int,
          config: SeqNetConfig) -> _Pair:
    q_ends, q_rows = query.window_rows(length)
    d_ends, d_rows = database.window_rows(length)
    gap = np.abs(query.positions[q_ends][:, None] - database.positions[d_ends][None, :])
    return _Pair(torch.from_numpy(np.ascontiguousarray(query.descriptors[q_rows], dtype=np.float32)),
                 torch.from_numpy(np.ascontiguousarray(database.descriptors[d_rows], dtype=np.float32)),
                 gap <= config.positive_radius, gap > config.negative_radius)


@torch.no_grad()
def _describe(model: SeqNet, windows: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([model(windows[i:i + chunk]) for i in range(0, len(windows), chunk)])


@torch.no_grad()
def recall_at_1(model: SeqNet, pairs: Sequence[_Pair]) -> float:
    """Share of query windows whose nearest map window is a positive, over all pairs."""
    model.eval()
    hits, total = 0, 0
    for pair in pairs:
        has_positive = pair.positives.any(axis=1)
        best = (_describe(model, pair.query) @ _describe(model, pair.database).T).argmax(dim=1).numpy()
        hits += int(pair.positives[np.arange(len(best)), best][has_positive].sum())
        total += int(has_positive.sum())
    return hits / max(total, 1)


def _triplets(model: SeqNet, pair: _Pair, negatives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, positive rows, (Q, negatives) negative rows) mined with the current model."""
    model.eval()
    sim = (_describe(model, pair.query) @ _describe(model, pair.database).T).numpy()
    usable = pair.positives.any(axis=1) & (pair.negatives.sum(axis=1) >= negatives)
    q = np.nonzero(usable)[0]
    positive = np.where(pair.positives[q], sim[q], -np.inf).argmax(axis=1)
    neg_sim = np.where(pair.negatives[q], sim[q], -np.inf)
    hardest = np.argpartition(-neg_sim, negatives - 1, axis=1)[:, :negatives]
    return q, positive, hardest


def train_seqnet(train: Sequence[tuple[TraversalDescriptors, TraversalDescriptors]],
                 val: Sequence[tuple[TraversalDescriptors, TraversalDescriptors]], config: SeqNetConfig,
                 progress: bool = True) -> tuple[SeqNet, dict[str, Any]]:
    """Train SeqNet on (query, map) traversal pairs; keep the epoch with the best validation recall@1.

    Returns:
        the best model (eval mode) and a report: config, per-epoch loss and validation recall@1, the best
        epoch, and the recall@1 of the average-pooling start (epoch 0).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    length = config.length
    dim = int(train[0][0].descriptors.shape[1])
    kernel = min(config.kernel or length, length)
    model = SeqNet(dim, config.output_dim or kernel * dim, kernel)
    if model.conv.out_channels == kernel * dim:
        model.init_as_concatenation()
    elif model.conv.out_channels == dim:
        model.init_as_average()
    train_pairs = [_pair(q, d, length, config) for q, d in train]
    val_pairs = [_pair(q, d, length, config) for q, d in val]
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_recall = recall_at_1(model, val_pairs)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = [{"epoch": 0, "loss": float("nan"), "val_recall@1": best_recall}]
    best_epoch, stale = 0, 0
    # Early stopping keeps an epoch only when it beats the best validation recall: from a perfect start no epoch
    # can, so training would end with the start's weights anyway (after `patience` epochs of work).
    last_epoch = 0 if best_recall >= 1.0 else config.epochs
    if not last_epoch:
        log.info("sequence model: validation recall@1 of the start is already 1.0; keeping it (nothing to select on)")
    epochs = tqdm(range(1, last_epoch + 1), desc="sequence model", unit="epoch", disable=not progress)
    for epoch in epochs:
        losses = []
        for pair in train_pairs:
            q, pos, neg = _triplets(model, pair, config.negatives)
            model.train()
            order = rng.permutation(len(q))
            for start in range(0, len(q), config.batch_size):
                sel = order[start:start + config.batch_size]
                anchor = model(pair.query[q[sel]])
                positive = model(pair.database[pos[sel]])
                negative = model(pair.database[neg[sel].reshape(-1)]).view(len(anchor), config.negatives, -1)
                d_pos = ((anchor - positive) ** 2).sum(dim=1, keepdim=True)
                d_neg = ((anchor[:, None, :] - negative) ** 2).sum(dim=2)
                loss = torch.relu(config.margin + d_pos - d_neg).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
        recall = recall_at_1(model, val_pairs)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                        "val_recall@1": recall})
        epochs.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_r1=f"{recall:.3f}")
        if recall > best_recall:
            best_recall, best_epoch, stale = recall, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                log.info("sequence model: no better validation recall@1 for %d epochs, stopping at epoch %d",
                         stale, epoch)
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"config": asdict(config), "history": history, "best_epoch": best_epoch,
                   "best_val_recall@1": best_recall, "average_pooling_val_recall@1": history[0]["val_recall@1"]}


def export_seqnet(model: SeqNet, out_dir: str | Path, model_id: str, *, length: int,
                  frame_encoder: Mapping[str, Any], check_windows: np.ndarray,
                  sections: Mapping[str, Any] | None = None, opset: int = 17,
                  tolerance: float = 1e-5) -> Path:
    """Write ``<out_dir>/<id>.onnx`` and its card after checking ONNX Runtime against PyTorch.

    Args:
        frame_encoder: identity of the frame encoder it was trained on (``id``, ``onnx_sha256``,
            ``descriptor_dim``), checked against maps by the node.
        check_windows: (B, L, D) real windows for the parity check (before anything is written).

    Returns the card path. Raises ValueError when the parity check fails.
    """
    import onnx

    from vpr_ros.core.files import atomic_output
    from vpr_training.export.common import parity

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dim = int(model.conv.weight.shape[1])
    example = torch.zeros(2, length, dim)
    onnx_path = out_dir / f"{model_id}.onnx"
    tmp_graph = out_dir / f".{model_id}.onnx.tracing"
    torch.onnx.export(model, (example,), str(tmp_graph), input_names=["sequence"], output_names=["descriptor"],
                      dynamic_axes={"sequence": {0: "batch", 1: "frames"}, "descriptor": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    graph = onnx.load(str(tmp_graph))
    tmp_graph.unlink()
    onnx.checker.check_model(graph)
    from vpr_ros.core import ort

    session = ort.session(graph.SerializeToString())
    windows = np.ascontiguousarray(check_windows, dtype=np.float32)
    got = session.run(None, {"sequence": windows})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(windows)).numpy()
    stats = parity(expected, got)
    if not stats["max_abs_diff"] <= tolerance:
        raise ValueError(f"sequence model parity check failed: ONNX Runtime and PyTorch differ by "
                         f"{stats['max_abs_diff']} (> {tolerance})")
    with atomic_output(onnx_path, "wb") as fh:
        fh.write(graph.SerializeToString())
    card = SequenceModelCard.build(
        id=model_id, description=f"SeqNet (Garg & Milford, RA-L 2021): Conv1d({dim}->{model.conv.out_channels}, "
        f"w={model.kernel}) over {length} frame descriptors of encoder {frame_encoder.get('id')}, mean over "
        "time, L2 norm; trained by vpr_training.seqnet", onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path), opset=opset, length=length, input_dim=dim,
        output_dim=int(model.conv.out_channels), frame_encoder=frame_encoder,
        sections={"parity": {"windows": len(windows), **stats, "tolerance": tolerance}, **dict(sections or {})})
    return write_sequence_card(onnx_path.with_suffix(".yaml"), card)
