"""Prompts and the grounded output format of DeepSeek-OCR.

Prompts are plain text with an ``<image>`` placeholder and no chat roles (PAPER_FACTS.md,
"Prompts and output format"). Coarse labels (plain text) and fine labels (layout + text) are
told apart only by the prompt. A fine label is a sequence of grounded blocks

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>
    block text

with box coordinates normalized to 1000 bins (integers 0..999). ``format_grounded_block``
writes one block, ``format_grounded_page`` joins blocks, and ``parse_grounded_output`` reads
them back from a model's output (tolerant of several boxes in one ``<|det|>``, spacing
variants and a truncated tail). The data engine imports these rather than re-implementing them
so labels and the parser can never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

IMAGE_TOKEN = "<image>"
GROUNDING_TOKEN = "<|grounding|>"
REF_START, REF_END = "<|ref|>", "<|/ref|>"
DET_START, DET_END = "<|det|>", "<|/det|>"

PROMPT_COARSE = "<image>\nFree OCR."  # text only (coarse labels)
PROMPT_FINE = "<image>\n<|grounding|>Convert the document to markdown."  # layout + text
PROMPT_FIGURE = "<image>\nParse the figure."  # charts -> HTML tables, formulas, geometry
PROMPT_LOCATE = "<image>\nLocate <|ref|>{}<|/ref|> in the image."  # .format(query)
PROMPT_OCR_GROUNDED = "<image>\n<|grounding|>OCR this image."  # scene text with boxes
PROMPT_DESCRIBE = "<image>\nDescribe this image in detail."  # captions (general vision)

PROMPTS = {
    "coarse": PROMPT_COARSE,
    "fine": PROMPT_FINE,
    "figure": PROMPT_FIGURE,
}

NUM_BINS = 1000  # coordinates are integers in [0, NUM_BINS - 1]
BLOCK_SEPARATOR = "\n\n"  # between grounded blocks of one page

_MARKERS = (REF_START, REF_END, DET_START, DET_END)


def locate_prompt(query: str) -> str:
    """Prompt asking for the boxes of ``query`` (the answer is ``<|det|>`` boxes)."""
    _check_free_of_markers(query, "query")
    return PROMPT_LOCATE.format(query)


def _check_free_of_markers(s: str, what: str) -> None:
    for m in _MARKERS:
        if m in s:
            raise ValueError(f"{what} must not contain the marker {m!r}: {s[:80]!r}")


def _check_box(box: Sequence[float]) -> list[int]:
    if len(box) != 4:
        raise ValueError(f"a box is [x1, y1, x2, y2], got {len(box)} values: {box!r}")
    out = [int(round(float(v))) for v in box]
    if any(v < 0 or v >= NUM_BINS for v in out):
        raise ValueError(f"box coordinates must be in 0..{NUM_BINS - 1} (normalized bins): {box!r}")
    if out[0] > out[2] or out[1] > out[3]:
        raise ValueError(f"box must satisfy x1 <= x2 and y1 <= y2: {box!r}")
    return out


def format_box(box: Sequence[float]) -> str:
    """``[[x1, y1, x2, y2]]`` as the model writes it (one box)."""
    x1, y1, x2, y2 = _check_box(box)
    return f"[[{x1}, {y1}, {x2}, {y2}]]"


def format_grounded_block(label: str, box: Sequence[float], text: str) -> str:
    """One grounded block: ``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>\\ntext``.

    ``box`` is in normalized bins (0..999); floats are rounded. ``text`` may be empty (e.g. an
    image block). Label and text must not contain the ref/det markers (that would make the
    label unparsable).
    """
    if not label or label != label.strip():
        raise ValueError(f"label must be a non-empty string without surrounding spaces: {label!r}")
    _check_free_of_markers(label, "label")
    _check_free_of_markers(text, "text")
    return f"{REF_START}{label}{REF_END}{DET_START}{format_box(box)}{DET_END}\n{text}"


def format_grounded_page(blocks: Iterable[tuple[str, Sequence[float], str]]) -> str:
    """Blocks ``(label, box, text)`` in reading order, joined by a blank line."""
    return BLOCK_SEPARATOR.join(format_grounded_block(lb, bx, tx) for lb, bx, tx in blocks)


# A block header. The det payload is matched lazily up to its end marker; a header whose
# <|/det|> is missing (output truncated mid-box) does not match and is dropped.
_HEADER = re.compile(
    re.escape(REF_START) + r"(.*?)" + re.escape(REF_END) + r"\s*"
    + re.escape(DET_START) + r"(.*?)" + re.escape(DET_END),
    re.S,
)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")


def parse_boxes(det: str) -> list[list[int]]:
    """All ``[x1, y1, x2, y2]`` boxes in a det payload (``[[..], [..]]`` or ``[..]``)."""
    return [[int(round(float(v))) for v in m.groups()] for m in _BOX.finditer(det)]


def parse_grounded_output(text: str) -> list[tuple[str, list[int], str]]:
    """Parse grounded output into ``[(label, [x1, y1, x2, y2], text), ...]`` in order.

    A block's text runs from its ``<|/det|>`` to the next ``<|ref|>`` (or the end), with the
    surrounding newlines removed. A det holding several boxes yields one entry per box, each
    with the block's text. Blocks whose det has no parsable box, text before the first block
    and an unterminated trailing header are skipped: this parses model output, which can be
    truncated or slightly malformed, so it never raises.
    """
    out: list[tuple[str, list[int], str]] = []
    headers = list(_HEADER.finditer(text))
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = text[m.end():end]
        # A dangling "<|ref|>" of a truncated next header is not part of this block's text.
        cut = body.find(REF_START)
        if cut >= 0:
            body = body[:cut]
        body = body.strip("\n")
        label = m.group(1).strip()
        for box in parse_boxes(m.group(2)):
            out.append((label, box, body))
    return out


__all__ = [
    "IMAGE_TOKEN", "GROUNDING_TOKEN", "REF_START", "REF_END", "DET_START", "DET_END",
    "PROMPT_COARSE", "PROMPT_FINE", "PROMPT_FIGURE", "PROMPT_LOCATE", "PROMPT_OCR_GROUNDED",
    "PROMPT_DESCRIBE", "PROMPTS", "NUM_BINS",
    "BLOCK_SEPARATOR", "locate_prompt", "format_box", "format_grounded_block",
    "format_grounded_page", "parse_boxes", "parse_grounded_output",
]
