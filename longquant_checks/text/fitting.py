"""Token-exact prompt assembly: fill a bucket with haystack around needles, without re-tokenizing.

The prompt is frame.prefix + head + context + tail + frame.suffix, as token ids. The context is a
stream of haystack units with fixed pieces (needles) inserted whole at requested depths. We add the
ids of whole units until the next one would overflow, then cut that last haystack unit to the exact
remaining token count (never a needle). So prompt + generation budget == bucket, minus at most the
one or two tokens a clean character boundary can cost. RULER instead binary-searches the haystack
size and re-tokenizes the whole prompt at every step; see bench/prompt_build.py.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import LongquantError
from .tokens import PromptTokenizer

_CHUNK = 256  # haystack units tokenized per batch


class FitError(LongquantError, ValueError):
    """The fixed parts of a prompt do not fit the bucket."""


@dataclass(frozen=True)
class Insert:
    """A piece placed whole into the haystack at a relative depth in [0, 1] (0 = start of context)."""

    text: str
    depth: float
    tag: str = "needle"


@dataclass
class Assembled:
    content: str  # the user turn's text
    token_ids: list[int]
    context_tokens: int
    positions: list[dict] = field(default_factory=list)  # per insert: tag, token start, actual depth


def assemble(
    tok: PromptTokenizer,
    head: str,
    tail: str,
    inserts: list[Insert],
    filler: Iterator[str] | None,
    budget: int,
    cache_filler: bool = True,
) -> Assembled:
    """Build a prompt of exactly `budget` tokens (or fewer if `filler` is None or runs out)."""
    head_ids = list(tok.frame.prefix_ids) + tok.encode(head)
    tail_ids = tok.encode(tail) + list(tok.frame.suffix_ids)
    insert_ids = tok.encode_many([ins.text for ins in inserts], cache=False)
    fixed = len(head_ids) + len(tail_ids) + sum(len(ids) for ids in insert_ids)
    room = budget - fixed
    if room < 0:
        raise FitError(f"the fixed parts of this prompt take {fixed} tokens, more than the {budget} available")

    unit_texts: list[str] = []
    unit_ids: list[tuple[int, ...]] = []
    total = 0
    done = filler is None or room == 0
    while not done:
        chunk = list(itertools.islice(filler, _CHUNK))
        if not chunk:  # a finite filler ran out: the prompt stays shorter than the budget
            break
        for text, ids in zip(chunk, tok.encode_many(chunk, cache=cache_filler)):
            space = room - total
            if len(ids) >= space:
                if len(ids) > space:  # cut the last haystack unit; the gap left is under one character
                    ids, text = tok.clean_prefix(ids, space)
                if ids:
                    unit_texts.append(text)
                    unit_ids.append(ids)
                done = True
                break
            unit_texts.append(text)
            unit_ids.append(ids)
            total += len(ids)

    # Insert each piece at the unit boundary closest to its depth (in haystack tokens).
    offsets = [0]
    for ids in unit_ids:
        offsets.append(offsets[-1] + len(ids))
    haystack_tokens = offsets[-1]
    slots: dict[int, list[int]] = {}
    for k, ins in enumerate(inserts):
        target = ins.depth * haystack_tokens
        j = bisect.bisect_left(offsets, target)
        if j > 0 and (j == len(offsets) or target - offsets[j - 1] <= offsets[j] - target):
            j -= 1
        slots.setdefault(j, []).append(k)

    ids_out = list(head_ids)
    text_parts = [head]
    positions: list[dict] = [{} for _ in inserts]
    context_start = len(ids_out)
    for j in range(len(unit_ids) + 1):
        for k in sorted(slots.get(j, []), key=lambda k: inserts[k].depth):
            positions[k] = {"tag": inserts[k].tag, "token_start": len(ids_out), "depth": inserts[k].depth}
            ids_out.extend(insert_ids[k])
            text_parts.append(inserts[k].text)
        if j < len(unit_ids):
            ids_out.extend(unit_ids[j])
            text_parts.append(unit_texts[j])
    context_tokens = len(ids_out) - context_start
    for pos in positions:
        pos["actual_depth"] = round((pos["token_start"] - context_start) / max(context_tokens, 1), 4)
    ids_out.extend(tail_ids)
    text_parts.append(tail)
    return Assembled("".join(text_parts), ids_out, context_tokens, positions)


def frame(tok: PromptTokenizer, head: str, body_texts: list[str], body_ids: list[tuple[int, ...]] | list[list[int]],
          tail: str) -> tuple[str, list[int]]:
    """Content text and prompt ids for a body whose pieces were fitted by the caller (word lists)."""
    ids = list(tok.frame.prefix_ids) + tok.encode(head)
    for piece in body_ids:
        ids.extend(piece)
    ids.extend(tok.encode(tail))
    ids.extend(tok.frame.suffix_ids)
    return head + "".join(body_texts) + tail, ids


def fixed_cost(tok: PromptTokenizer, head: str, tail: str) -> int:
    """Tokens taken by the chat frame, the head and the tail of a prompt."""
    return len(tok.frame.prefix_ids) + len(tok.encode(head)) + len(tok.encode(tail)) + len(tok.frame.suffix_ids)
