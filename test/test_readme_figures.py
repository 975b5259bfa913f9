"""Every measured figure in README.md is tagged with the results file and key it comes from, and matches it.

Tag convention (also described in README.md, "Where the figures come from"): right after a measured number
(and its unit, and a closing ``**``) comes an HTML comment, invisible on GitHub,

    0.928 <!-- fig: patch_rerank.json#recall.320x240/global_only.recall@1 -->
    1.92 MB <!-- fig: patch_rerank.json#storage.official_speed_bytes_per_640x480_frame in MB -->

naming a file in ``bench/results/`` and a dotted path into its JSON (list indices are numbers:
``live.0.answered``). ``in kB`` / ``in MB`` / ``in GB`` mark a value stored in bytes, ``in %`` a fraction.
The printed number must equal the stored value at the printed precision ("0.928" matches 0.92786, "4.8"
matches 4.77, "127" matches 126.5, "4.5e-8" matches 4.47e-8, "inf" matches infinity).

Anything in README.md that looks measured (a number followed by ms, s, min, x, MB, kB, GB, %, frames/s,
GFLOP(/s), GOP/s or points; a decimal with two or more places; a number in scientific notation) must carry
a tag, or appear inside one of the phrases of ``NOT_MEASURED`` (paper constants, tolerances, sizes of
things), so that a new figure cannot sneak in untagged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"

#: Untagged figures that are not measurements, as the phrase they appear in (every occurrence is allowed; a
#: space matches any run of whitespace, so re-wrapping README.md does not matter).
NOT_MEASURED: tuple[str, ...] = (
    "about 6 GB (torch)",                        # install size of the pinned wheels, not a result
    "efficientnet_lite0_b10.onnx`, 2.8 MB",      # size of the shipped file
    "(1e12)",                                    # LoopClosure.msg constant
    "variances of 1e12",                         # the same constant
    "stamp within 50 ms",                        # the node's depth/image pairing rule
    "checks a 0.25 m offset",                    # a test's input
    "(S_H + S_F) > 0.45",                        # ORB-SLAM's model selection threshold (published)
    "length × (1 + 0.01 + N(0, 0.02))",          # the drift model of the two-session bench (its input)
    "ros/rosdistro at 8468e88c",                 # commit of the rosdep snapshot
    "enlarged at most 2x",                       # max_upscale default
    "enlarged 2x",                               # the same rule applied to 64x32 Nordland frames
    "0.25 m / 2°, 0.5 m / 5° and 5 m / 10°",     # RobotCar Seasons pose bins (published)
    "0.25 m/2°, 0.5 m/5°, 5 m/10°",              # the same bins in the dataset table
    "recall at 100% precision",                  # definition
    "0.45, 0.15, 0.40",                          # Patch-NetVLAD fusion weights (paper)
    "one query is 1.9 points",                   # 1 / 54 queries, arithmetic
    "~950 ms per top-100 query on an RTX A5000", # the paper's published GPU figure
    "fits 0.25 MB",                              # a storage budget, not a result
    "when its file is under 512 MB",             # map_index.INDEX_IN_RAM_BELOW, a setting
    "exit 3 above 1e-3",                         # export tolerance
    "logits within 1e-3",                        # test tolerance
    "weight decay 1e-4",                         # paper hyper-parameter
    "the test's tolerance of 1e-5",              # test tolerance
    "`confidence` / 0.15",                       # loop_closure.min_score default (defaults.json holds its choice)
)

NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e-?\d+)?(?!\d|\.\d)|(?<!\w)inf(?!\w)")
TAG = re.compile(r"<!--\s*fig:\s*(?P<file>[^#\s]+)#(?P<key>.+?)(?:\s+in\s+(?P<unit>%|kB|MB|GB))?\s*-->")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
URL = re.compile(r"https?://[^\s)]+")
#: What may stand between a tagged number and its tag: a unit, closing brackets, bold markers, spaces.
UNIT = r"(?:ms|s|min|MB|kB|GB|%|x|frames/s|GFLOP/s|GOP/s|GFLOP|points)"
GAP = re.compile(rf"\s*{UNIT}?[\s*)]*")
#: Measured-looking figures: number + unit ("x" not followed by a digit: 320x240 is a size), decimals with
#: two or more places, scientific notation.
NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
MEASURED = (
    re.compile(rf"(?<![\w.]){NUM}\s?(?:ms|s|min|minutes|seconds|MB|kB|GB|%|frames/s|GFLOP/s|GOP/s|GFLOP|points)"
               rf"(?![\w/])"),
    re.compile(rf"(?<![\w.]){NUM}\s?x(?!\s*\d)(?![\w])"),
    re.compile(r"(?<![\w.])\d+\.\d{2,}(?![\d.])"),
    re.compile(r"(?<![\w.])\d+(?:\.\d+)?e-?\d+"),
)
SCALE = {None: 1.0, "%": 100.0, "kB": 1e-3, "MB": 1e-6, "GB": 1e-9}


@dataclass(frozen=True)
class Figure:
    """One tagged number of README.md."""

    line: int
    printed: str
    start: int  # offset of the number in README.md
    file: str
    key: str
    unit: str | None

    def __str__(self) -> str:
        unit = f" in {self.unit}" if self.unit else ""
        return f"README.md:{self.line} {self.printed} <- {self.file}#{self.key}{unit}"


def blank(pattern: re.Pattern[str], text: str) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces (offsets and line numbers unchanged)."""
    return pattern.sub(lambda m: " " * len(m.group()), text)


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"\s+".join(re.escape(word) for word in phrase.split()))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_figures(text: str) -> tuple[list[Figure], list[str]]:
    """The tagged figures, and one message per tag that does not follow a number."""
    numbers = list(NUMBER.finditer(blank(HTML_COMMENT, text)))
    figures, errors = [], []
    taken: set[int] = set()
    for tag in TAG.finditer(text):
        before = [n for n in numbers if n.end() <= tag.start()]
        number = before[-1] if before else None
        if number is None or number.start() in taken or not GAP.fullmatch(text[number.end():tag.start()]):
            errors.append(f"README.md:{line_of(text, tag.start())}: {tag.group()} does not follow a number")
            continue
        taken.add(number.start())
        figures.append(Figure(line_of(text, number.start()), number.group(), number.start(), tag["file"],
                              tag["key"].strip(), tag["unit"]))
    for bad in re.finditer(r"<!--\s*fig\b(?![^>]*#)", text):
        errors.append(f"README.md:{line_of(text, bad.start())}: a fig tag without FILE#KEY")
    return figures, errors


def lookup(doc: Any, key: str) -> Any:
    """Dotted path into JSON; list indices are numbers; a key that itself contains dots is matched whole."""
    parts = key.split(".")
    node, i = doc, 0
    while i < len(parts):
        if isinstance(node, list):
            if not parts[i].isdigit() or int(parts[i]) >= len(node):
                raise KeyError(f"no list index {parts[i]!r}")
            node, i = node[int(parts[i])], i + 1
        elif isinstance(node, dict):
            for j in range(len(parts), i, -1):
                if (name := ".".join(parts[i:j])) in node:
                    node, i = node[name], j
                    break
            else:
                raise KeyError(f"no key {parts[i]!r} (have: {', '.join(map(str, node))})")
        else:
            raise KeyError(f"{'.'.join(parts[:i])} is a {type(node).__name__}, not an object or a list")
    return node


def printed_value(printed: str) -> tuple[float, float]:
    """The number as printed and half a unit of its last printed digit."""
    if printed == "inf":
        return math.inf, 0.0
    mantissa, _, exponent = printed.replace(",", "").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(mantissa) * 10.0 ** int(exponent or 0), 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def matches(printed: str, stored: float) -> bool:
    value, half_unit = printed_value(printed)
    if math.isinf(value) or math.isinf(stored):
        return value == stored
    return abs(stored - value) <= half_unit * (1 + 1e-9) + 1e-12


README_TEXT = README.read_text(encoding="utf-8")
FIGURES, TAG_ERRORS = parse_figures(README_TEXT)


def test_tags_follow_numbers() -> None:
    assert not TAG_ERRORS, "\n".join(TAG_ERRORS)


def test_readme_has_figures() -> None:
    # The parser must find the tables' figures; a broken tag syntax would otherwise pass every check vacuously.
    assert len(FIGURES) > 100


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f"L{f.line}:{f.printed}")
def test_figure_matches_results(figure: Figure) -> None:
    path = (RESULTS / figure.file).resolve()
    assert path.parent == RESULTS and path.is_file(), f"{figure}: no results file bench/results/{figure.file}"
    try:
        stored = lookup(json.loads(path.read_text()), figure.key)
    except KeyError as exc:
        pytest.fail(f"{figure}: key missing ({exc.args[0]})")
    assert isinstance(stored, int | float) and not isinstance(stored, bool), \
        f"{figure}: stored value {stored!r} is not a number"
    scaled = stored * SCALE[figure.unit]
    assert matches(figure.printed, scaled), f"{figure}: stored {scaled!r} does not print as {figure.printed}"


def test_no_untagged_measured_figures() -> None:
    text = blank(URL, blank(HTML_COMMENT, README_TEXT))
    tagged = {f.start for f in FIGURES}
    allowed = [range(m.start(), m.end()) for phrase in NOT_MEASURED for m in phrase_pattern(phrase).finditer(text)]
    untagged = []
    for pattern in MEASURED:
        for m in pattern.finditer(text):
            if m.start() in tagged or any(m.start() in span for span in allowed):
                continue
            untagged.append(f"README.md:{line_of(text, m.start())}: {m.group()!r} in "
                            f"{text[max(0, m.start() - 40):m.end() + 20]!r}")
    assert not untagged, "measured-looking figures without a <!-- fig: FILE#KEY --> tag (or add the phrase to " \
                         "NOT_MEASURED if it is not a measurement):\n" + "\n".join(sorted(set(untagged)))


def test_not_measured_phrases_still_in_readme() -> None:
    stale = [phrase for phrase in NOT_MEASURED if not phrase_pattern(phrase).search(HTML_COMMENT.sub("", README_TEXT))]
    assert not stale, f"NOT_MEASURED phrases no longer in README.md (remove them): {stale}"


@pytest.mark.parametrize(("printed", "stored", "ok"), [
    ("0.928", 0.92786, True), ("0.928", 0.9285, True), ("0.928", 0.9291, False), ("4.8", 4.77, True),
    ("4.8", 4.74, False), ("127", 126.6, True), ("127", 126.4, False), ("4.5e-8", 4.47e-8, True),
    ("4.5e-8", 4.4e-8, False), ("1,417", 1417.4, True), ("inf", math.inf, True), ("inf", 1e9, False),
])
def test_precision_rule(printed: str, stored: float, ok: bool) -> None:
    assert matches(printed, stored) is ok


def test_lookup_paths() -> None:
    doc = {"live": [{"answered": 111}], "a.b": {"c": 1}, "recall": {"320x240/global_only": {"recall@1": 0.9}}}
    assert lookup(doc, "live.0.answered") == 111
    assert lookup(doc, "a.b.c") == 1
    assert lookup(doc, "recall.320x240/global_only.recall@1") == 0.9
    for missing in ("live.1.answered", "live.0.dropped", "recall.x"):
        with pytest.raises(KeyError):
            lookup(doc, missing)


def test_parser_ties_tags_to_the_number_before() -> None:
    text = ("a **p50 12.9 ms**<!-- fig: f.json#a.p50 --> and 4.8x <!-- fig: f.json#b in % --> faster\n"
            "| 0.197 (0.186 <!-- fig: f.json#c -->) | 1,417 GOP/s <!-- fig: f.json#d -->|\n")
    figures, errors = parse_figures(text)
    assert [(f.printed, f.key, f.unit) for f in figures] == [("12.9", "a.p50", None), ("4.8", "b", "%"),
                                                              ("0.186", "c", None), ("1,417", "d", None)]
    assert not errors
    for loose in ("recall <!-- fig: f.json#x -->", "12.9 ms of latency <!-- fig: f.json#x -->",
                  "<!-- fig: f.json -->"):
        assert parse_figures(loose)[1], loose
