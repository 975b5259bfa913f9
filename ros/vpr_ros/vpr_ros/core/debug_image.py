"""A debug view of one answer, ROS-free: the query beside its best map frame, the matched patches, the numbers.

::

    +---------------------------------------------------------------+
    | query                      | reference: map id 43             |  header band (labels)
    +----------------------------+----------------------------------+
    |  query image, resized      |  reference image, resized        |  panels, same height
    |     o-------------------------------------o  (patch pairs)    |
    +---------------------------------------------------------------+
    | rank 1/10: ref id 43 (row 43), ref t=..., query t=...          |  footer band (text)
    | score 0.223   confidence 0.004                                 |
    | patches: 60 mutual pairs of 234, size 48 px, 50 strongest drawn|
    +---------------------------------------------------------------+

The image panels hold only image pixels and match drawings; all text sits in the bands, so it stays legible on any
image and the panels can be compared with the inputs. Small inputs (the 160x120 corridor frames) are upscaled
to ``min_panel_height`` first so that lines and text are readable; large ones are shrunk to ``max_panel_height``.

Patch pairs come from :meth:`vpr_ros.core.localizer.Localizer.explain` (``localize(..., explain=True)``): the
mutual nearest neighbours the Patch-NetVLAD re-ranker matched. Each pair is a line between the two patch centres,
with a dot at each end in the same colour (:func:`match_colours`); at most ``max_matches`` pairs, the strongest.

A map stores where each frame's image came from (``frames.csv``, column ``source``), not the image; when that
source is gone the reference panel says so instead of showing an image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from vpr_ros.core.frames import FrameTable
from vpr_ros.core.image import check_rgb, resize_rgb
from vpr_ros.core.localizer import Hypothesis
from vpr_ros.core.patchnetvlad.rerank import PatchCorrespondences

BACKGROUND = (24, 24, 24)
TEXT_COLOUR = (240, 240, 240)
MISSING_PANEL = (64, 64, 64)
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: The reference panel's text when the map frame's image cannot be read.
MISSING_REFERENCE = "reference image not stored in the map"


@dataclass(frozen=True)
class DebugLayout:
    """Where :func:`render_match` puts things, in pixels of the output image.

    Boxes are (x, y, width, height). ``reference_box`` has the reference panel's size even when the image is
    missing (the panel then shows :data:`MISSING_REFERENCE`).
    """

    width: int
    height: int
    query_box: tuple[int, int, int, int]
    reference_box: tuple[int, int, int, int]
    header_height: int
    footer_y: int
    font_scale: float
    thickness: int
    line_height: int


def debug_layout(query_hw: tuple[int, int], reference_hw: tuple[int, int] | None, footer_lines: int = 3,
                 min_panel_height: int = 360, max_panel_height: int = 720, gap: int = 8) -> DebugLayout:
    """The layout of a debug image for a query of ``query_hw`` and a reference of ``reference_hw`` = (h, w).

    Both images are scaled to one panel height: the query's own height, clamped to
    [``min_panel_height``, ``max_panel_height``]. A missing reference (None) gets a panel of the query's size.
    """
    if min(query_hw) < 1 or (reference_hw is not None and min(reference_hw) < 1):
        raise ValueError(f"image sizes must be positive, got query {query_hw} and reference {reference_hw}")
    if not 1 <= min_panel_height <= max_panel_height:
        raise ValueError(f"need 1 <= min_panel_height <= max_panel_height, got {min_panel_height}, {max_panel_height}")
    panel_h = int(np.clip(query_hw[0], min_panel_height, max_panel_height))
    query_w = max(1, round(query_hw[1] * panel_h / query_hw[0]))
    ref_hw = reference_hw or query_hw
    ref_w = max(1, round(ref_hw[1] * panel_h / ref_hw[0]))
    width = query_w + gap + ref_w
    # Text scaled to the panel height: ~17 px tall capitals at 360 rows, thicker strokes on large images.
    font_scale = float(np.clip(panel_h / 600.0, 0.45, 1.2))
    thickness = 1 if panel_h < 600 else 2
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, font_scale, thickness)
    line_height = text_h + baseline + max(4, text_h // 2)
    header = line_height + gap
    footer_y = header + panel_h + gap
    height = footer_y + footer_lines * line_height + gap
    return DebugLayout(width, height, (0, header, query_w, panel_h), (query_w + gap, header, ref_w, panel_h),
                       header, footer_y, font_scale, thickness, line_height)


def match_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB colours of drawn match ``i``: hues evenly around the colour wheel, full saturation."""
    hsv = np.zeros((max(count, 0), 1, 3), dtype=np.uint8)
    hsv[:, 0, 0] = (np.arange(count) * 180 // max(count, 1)).astype(np.uint8)   # OpenCV hue range is [0, 180)
    hsv[:, 0, 1:] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3) if count else np.zeros((0, 3), np.uint8)


def drawn_matches(matches: PatchCorrespondences, layout: DebugLayout,
                  max_matches: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """End points of the pairs :func:`render_match` draws, in output pixels: the ``max_matches`` strongest.

    Shape:
        returns query (n, 2) and reference (n, 2) int32 (x, y), n = min(len(matches), max_matches).
    """
    qx, qy, qw, qh = layout.query_box
    rx, ry, rw, rh = layout.reference_box
    keep = slice(0, max(0, max_matches))
    query_xy = matches.centres_in((qh, qw))[0]
    ref_xy = matches.centres_in((rh, rw))[1]
    query_pts = np.rint(query_xy[keep] + (qx, qy)).astype(np.int32)
    ref_pts = np.rint(ref_xy[keep] + (rx, ry)).astype(np.int32)
    return query_pts, ref_pts


def _put_text(canvas: np.ndarray, text: str, x: int, y: int, layout: DebugLayout, max_width: int,
              keep_end: bool = False) -> None:
    """``text`` with its baseline at ``y``, cut with an ellipsis to fit ``max_width`` pixels (at the start when
    ``keep_end``: a path keeps its file name)."""
    def width(s: str) -> int:
        return cv2.getTextSize(s, FONT, layout.font_scale, layout.thickness)[0][0]

    if width(text) > max_width:
        while len(text) > 1 and width(text + "...") > max_width:
            text = text[1:] if keep_end else text[:-1]
        text = "..." + text if keep_end else text + "..."
    cv2.putText(canvas, text, (x, y), FONT, layout.font_scale, TEXT_COLOUR, layout.thickness, cv2.LINE_AA)


def _fmt_stamp(stamp: float | None) -> str:
    return "unknown" if stamp is None or not np.isfinite(stamp) else f"{stamp:.3f} s"


def render_match(query_rgb: np.ndarray, reference_rgb: np.ndarray | None, matches: PatchCorrespondences | None,
                 score: float, confidence: float, *, ref_id: int | None = None, ref_row: int | None = None,
                 ref_stamp: float | None = None, query_stamp: float | None = None, rank: int = 1,
                 candidates: int | None = None, reference_source: str | None = None, max_matches: int = 50,
                 min_panel_height: int = 360, max_panel_height: int = 720) -> np.ndarray:
    """The debug image of one match: query beside reference, patch pairs drawn, numbers written.

    Args:
        query_rgb: the query image, RGB uint8 (H, W, 3).
        reference_rgb: the matched map frame's image, or None when it is not available (the panel says so).
        matches: the patch pairs of this query and reference (:meth:`Localizer.explain`); None = no patch
            matching (re-ranking off), written in the footer.
        score / confidence: the candidate's score and the answer's confidence.
        ref_id / ref_row / ref_stamp / query_stamp: written in the footer when given.
        rank / candidates: the candidate's rank (1 = best) among ``candidates``.
        reference_source: where the map says the reference image came from (written when it is missing).
        max_matches: pairs drawn at most (the strongest; :func:`drawn_matches`).
        min_panel_height / max_panel_height: panel height bounds (:func:`debug_layout`).

    Returns:
        RGB uint8 (layout.height, layout.width, 3), laid out as :func:`debug_layout` says.
    """
    query_rgb = check_rgb(query_rgb, "query image")
    if reference_rgb is not None:
        reference_rgb = check_rgb(reference_rgb, "reference image")
    layout = debug_layout(query_rgb.shape[:2], None if reference_rgb is None else reference_rgb.shape[:2],
                          min_panel_height=min_panel_height, max_panel_height=max_panel_height)
    canvas = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    qx, qy, qw, qh = layout.query_box
    rx, ry, rw, rh = layout.reference_box
    canvas[qy:qy + qh, qx:qx + qw] = resize_rgb(query_rgb, qh, qw)
    if reference_rgb is not None:
        canvas[ry:ry + rh, rx:rx + rw] = resize_rgb(reference_rgb, rh, rw)
    else:
        canvas[ry:ry + rh, rx:rx + rw] = MISSING_PANEL
        _put_text(canvas, MISSING_REFERENCE, rx + 8, ry + rh // 2, layout, rw - 16)
        if reference_source:
            _put_text(canvas, reference_source, rx + 8, ry + rh // 2 + layout.line_height, layout, rw - 16,
                      keep_end=True)

    drawn = 0
    if matches is not None and len(matches) and reference_rgb is not None:
        query_pts, ref_pts = drawn_matches(matches, layout, max_matches)
        drawn = len(query_pts)
        colours = match_colours(drawn)
        radius = _dot_radius(matches, layout)
        for q, r, colour in zip(query_pts.tolist(), ref_pts.tolist(), colours.tolist(), strict=True):
            cv2.line(canvas, q, r, colour, layout.thickness, cv2.LINE_AA)
        # Dots after every line, so each end point shows its own pair's colour (patches of one side never share
        # a centre: mutual nearest neighbours are one-to-one).
        for q, r, colour in zip(query_pts.tolist(), ref_pts.tolist(), colours.tolist(), strict=True):
            cv2.circle(canvas, q, radius, colour, -1, cv2.LINE_8)
            cv2.circle(canvas, r, radius, colour, -1, cv2.LINE_8)

    baseline = layout.header_height - layout.line_height // 2
    _put_text(canvas, "query", qx + 4, baseline, layout, qw - 8)
    ref_label = "reference" + (f": map id {ref_id}" if ref_id is not None else "")
    _put_text(canvas, ref_label, rx + 4, baseline, layout, rw - 8)
    of = f"/{candidates}" if candidates else ""
    where = f" (row {ref_row})" if ref_row is not None else ""
    first = (f"rank {rank}{of}: ref id {ref_id if ref_id is not None else '?'}{where}, ref t {_fmt_stamp(ref_stamp)}, "
             f"query t {_fmt_stamp(query_stamp)}")
    second = f"score {score:.3f}   confidence {confidence:.3f}"
    if matches is None:
        third = "patches: no patch matching (the map stores no patches, or re-ranking is off)"
    else:
        shown = f"{drawn} strongest drawn" if reference_rgb is not None else "not drawn without the reference"
        third = f"patches: {len(matches)} mutual pairs of {matches.n_query}, {matches.patch_size_px} px, {shown}"
    for i, line in enumerate((first, second, third)):
        _put_text(canvas, line, 8, layout.footer_y + (i + 1) * layout.line_height - layout.line_height // 4,
                  layout, layout.width - 16)
    return canvas


def _dot_radius(matches: PatchCorrespondences, layout: DebugLayout) -> int:
    """Dot radius: a third of the distance between neighbouring patch centres in the smaller panel, 2 to 6 px."""
    spacing_in = matches.grid.stride * matches.grid.pixel_stride
    scale = min(layout.query_box[3], layout.reference_box[3]) / matches.input_hw[0]
    return int(np.clip(spacing_in * scale / 3.0, 2, 6))


def render_hypothesis(query_rgb: np.ndarray, hyp: Hypothesis, frames: FrameTable,
                      load_reference: Callable[[int], np.ndarray | None], max_matches: int = 50,
                      min_panel_height: int = 360, max_panel_height: int = 720) -> np.ndarray:
    """:func:`render_match` for the best candidate of ``hyp`` (made with ``localize(..., explain=True)`` to
    show patch pairs).

    Args:
        query_rgb: the image ``hyp`` answers.
        hyp: the localizer's answer.
        frames: the map's frame table (ids, stamps and sources of the rows).
        load_reference: map row -> its RGB image, or None when it is gone (e.g. a wrapper around
            ``vpr_ros.io.bags.load_frame_source(frames.sources[row])``).
        max_matches / min_panel_height / max_panel_height: as for :func:`render_match`.
    """
    sizes = {"max_matches": max_matches, "min_panel_height": min_panel_height, "max_panel_height": max_panel_height}
    if len(hyp.indices) == 0:
        return render_match(query_rgb, None, None, float("nan"), hyp.confidence, query_stamp=hyp.stamp,
                            candidates=0, **sizes)
    row = hyp.best_index
    if hyp.explanation is not None and hyp.explanation.row != row:
        raise ValueError(f"the hypothesis explains map row {hyp.explanation.row}, its best candidate is row {row}")
    return render_match(query_rgb, load_reference(row), hyp.explanation, float(hyp.scores[0]), hyp.confidence,
                        ref_id=int(hyp.ids[0]), ref_row=row, ref_stamp=float(frames.stamps[row]),
                        query_stamp=hyp.stamp, rank=1, candidates=len(hyp.indices),
                        reference_source=frames.sources[row], **sizes)
