"""Token-exact prompt assembly: fill a bucket with haystack around needles, without re-tokenizing.

The prompt is frame.prefix + head + context + tail + frame.suffix, as token ids. The context is a stream of
filler units with fixed pieces (needles) inserted whole at requested depths. A needle is never cut, and neither is
a filler unit that is itself a needle (a distractor): exactness comes from the filler only.

- Text filler (noise and prose sentences, documents): whole units while they fit, then the longest prefix of one
  more unit that ends at a word boundary (a few next units are tried, the closest fit wins). The gap left is under
  one word's tokens.
- Piece filler (distractor needles, pre-tokenized): whole pieces in their drawn order while far from the end, then
  the last few chosen by length so that they add up to the room left (a small subset-sum over the lengths at hand).
  Where lengths cannot add up exactly (a few 100-token needles in a 1K bucket), text filler pads the end.

RULER instead binary-searches the haystack size and re-tokenizes the whole prompt at every step, and its last
needle haystack unit is never cut either, at the price of filling only 84-99% of the length; see
bench/prompt_build.py and docs/prompt_build.md.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

from ..errors import LongquantError
from .tokens import PromptTokenizer

_CHUNK = 256  # haystack units tokenized per batch
_LOOKAHEAD = 32  # units tried for the last, word-boundary cut (the closest fit wins)


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
    last_unit: dict = field(default_factory=dict)  # the filler's end: "whole", or "cut" with the unit's full text
    answer_prefix: str = ""  # what starts the assistant turn ("" for none)


class Filler(Protocol):
    def fill(self, tok: PromptTokenizer, room: int) -> tuple[list[str], list[tuple[int, ...]], dict]:
        """Units (texts and ids) that take at most `room` tokens, and how the filler ended."""


class TextFiller:
    """Sentences or documents in stream order; the last one cut at a word boundary."""

    def __init__(self, units: Iterator[str], cache: bool = True):
        self.units, self.cache = units, cache

    def fill(self, tok: PromptTokenizer, room: int) -> tuple[list[str], list[tuple[int, ...]], dict]:
        texts: list[str] = []
        ids_out: list[tuple[int, ...]] = []
        total = 0
        while total < room:
            chunk = list(itertools.islice(self.units, _CHUNK))
            if not chunk:  # a finite filler ran out: the prompt stays shorter than the budget
                return texts, ids_out, {"end": "exhausted"}
            encoded = tok.encode_many(chunk, cache=self.cache)
            for k, (text, ids) in enumerate(zip(chunk, encoded)):
                if total + len(ids) <= room:
                    texts.append(text)
                    ids_out.append(ids)
                    total += len(ids)
                    if total == room:
                        return texts, ids_out, {"end": "whole"}
                    continue
                # The first unit that does not fit, and a few after it: keep the closest word-boundary cut; if it
                # leaves a gap, the last three whole units and these candidates are recombined so that it closes.
                candidates = [text, *chunk[k + 1:k + _LOOKAHEAD]]
                candidates += list(itertools.islice(self.units, _LOOKAHEAD - len(candidates)))
                cut_ids, cut_text, source = tok.best_word_cut(candidates, room - total)
                if len(cut_ids) < room - total:
                    back = min(len(texts), 3)
                    given = list(zip(texts[len(texts) - back:], ids_out[len(ids_out) - back:]))
                    repaired = self._repair(tok, candidates, given, room - total)
                    if repaired is not None:
                        whole, (cut_ids, cut_text, source) = repaired
                        del texts[len(texts) - back:], ids_out[len(ids_out) - back:]
                        texts += [t for t, _ in whole]
                        ids_out += [i for _, i in whole]
                if not cut_ids:  # not even one word fits: the context ends with the last whole unit
                    return texts, ids_out, {"end": "whole"}
                texts.append(cut_text)
                ids_out.append(cut_ids)
                if cut_text == source:
                    return texts, ids_out, {"end": "whole"}
                return texts, ids_out, {"end": "cut", "unit": source, "kept_chars": len(cut_text)}
        return texts, ids_out, {"end": "whole"}


    @staticmethod
    def _repair(tok: PromptTokenizer, candidates: list[str], given_back: list[tuple[str, tuple[int, ...]]],
                space: int):
        """Whole units and one word cut that exactly fill `space` plus the tokens of the last whole units given
        back: the units from the given-back ones and the candidates (a subset sum), the cut from a candidate."""
        pieces = [*given_back, *zip(candidates, tok.encode_many(candidates, cache=False))]
        room = space + sum(len(ids) for _, ids in given_back)
        lengths = [len(ids) for _, ids in pieces]
        cuts = tok.word_cuts(candidates, room)
        options = sorted(((count, v, cut) for v, found in enumerate(cuts) for count, cut in found.items()),
                         reverse=True)
        for count, v, cut in options[:24]:
            own = len(given_back) + v  # the cut unit is not also used whole
            others = [0 if k == own else length for k, length in enumerate(lengths)]
            chosen = subset_sum(others, room - count)
            if sum(lengths[k] for k in chosen) == room - count:
                ids = tok.exact_prefix(candidates[v], cut, count)
                if ids is not None and len(ids) == count:
                    return [pieces[k] for k in chosen], (ids, candidates[v][:cut], candidates[v])
        return None


class PieceFiller:
    """Whole pre-tokenized pieces (distractor needles) in a drawn order; never cut. The last few are picked by
    length, from further down the order, so the pieces fill the room exactly whenever their lengths allow."""

    def __init__(self, texts: Sequence[str], ids: Sequence[tuple[int, ...]], order: Iterable[int],
                 pad: TextFiller | None = None):
        self.texts, self.ids, self.order, self.pad = texts, ids, list(order), pad

    def fill(self, tok: PromptTokenizer, room: int) -> tuple[list[str], list[tuple[int, ...]], dict]:
        lengths = [len(self.ids[i]) for i in self.order]
        if not lengths:
            return [], [], {"end": "exhausted"}
        # m pieces of lengths in [lo, hi] can sum to anything in [m lo, m hi]; those ranges join once m >= lo/(hi-lo).
        # So the greedy part leaves room for about that many pieces (lo, hi: the 10th and 90th percentiles, as the
        # extremes are rare) to a subset sum; if that cannot fill the room exactly, it gives back more, up to 4 times.
        ranked = sorted(lengths)
        lo, hi = ranked[len(ranked) // 10], ranked[-1 - len(ranked) // 10]
        m = min(64, -(-lo // (hi - lo))) if hi > lo else 64
        best: tuple[int, list[int]] | None = None
        for attempt in range(4):
            reserve = (m + 1) * max(ranked) * 2 ** attempt
            total, k = 0, 0
            while k < len(self.order) and room - total - lengths[k] >= reserve:
                total += lengths[k]
                k += 1
            last = [self.order[k + j] for j in subset_sum(lengths[k:], room - total)]
            filled = total + sum(len(self.ids[i]) for i in last)
            if best is None or filled > best[0]:
                best = (filled, self.order[:k] + last)
            if filled == room or k == 0:
                break
        chosen = best[1]
        texts, ids = [self.texts[i] for i in chosen], [self.ids[i] for i in chosen]
        if best[0] == room or self.pad is None:
            return texts, ids, {"end": "whole"}
        # Lengths that cannot add up to the room (a few long needles in a short bucket): plain filler text makes up
        # the rest, after the last needle.
        pad_texts, pad_ids, end = self.pad.fill(tok, room - best[0])
        return texts + pad_texts, ids + pad_ids, {**end, "padded": sum(map(len, pad_ids))}


def subset_sum(lengths: Sequence[int], target: int) -> list[int]:
    """Positions in `lengths` of a subset whose sum is the largest <= target (a bounded subset sum: each length at
    most as often as it occurs). Deterministic: the earliest positions of each length are used."""
    positions: dict[int, list[int]] = {}
    for k, length in enumerate(lengths):  # enough of each length to make up the target alone
        if 0 < length <= target and len(positions.setdefault(length, [])) < target // length + 1:
            positions[length].append(k)
    # last[s]: the length that first reached sum s; used[s]: how many of it that path takes
    last: list[int] = [0] + [-1] * target
    for length, at in sorted(positions.items()):
        used = [0] * (target + 1)
        for s in range(length, target + 1):
            if last[s] < 0 and last[s - length] >= 0 and used[s - length] < len(at):
                last[s] = length
                used[s] = used[s - length] + 1
    s = max(i for i in range(target + 1) if last[i] >= 0)
    taken: dict[int, int] = {}
    out: list[int] = []
    while s > 0:
        length = last[s]
        out.append(positions[length][taken.get(length, 0)])
        taken[length] = taken.get(length, 0) + 1
        s -= length
    return out


def assemble(
    tok: PromptTokenizer,
    head: str,
    tail: str,
    inserts: list[Insert],
    filler: Filler | Iterator[str] | None,
    budget: int,
    cache_filler: bool = True,
    answer_prefix: str = "",
) -> Assembled:
    """Build a prompt of at most `budget` tokens, as close to it as whole words allow (fewer if `filler` is None
    or runs out). A plain iterator of texts is a TextFiller. `answer_prefix` starts the assistant turn where the
    tokenizer's style and chat template allow it (Assembled.answer_prefix says what was used)."""
    prefix_text, prefix_ids = tok.answer_prefix_ids(answer_prefix)
    head_ids = list(tok.frame.prefix_ids) + tok.encode(head)
    tail_ids = tok.encode(tail) + list(tok.frame.suffix_ids) + prefix_ids
    insert_ids = tok.encode_many([ins.text for ins in inserts], cache=False)
    fixed = len(head_ids) + len(tail_ids) + sum(len(ids) for ids in insert_ids)
    room = budget - fixed
    if room < 0:
        raise FitError(f"the fixed parts of this prompt take {fixed} tokens, more than the {budget} available")
    if filler is not None and not hasattr(filler, "fill"):
        filler = TextFiller(filler, cache_filler)
    unit_texts: list[str] = []
    unit_ids: list[tuple[int, ...]] = []
    last_unit: dict = {"end": "none"}
    if filler is not None and room > 0:
        unit_texts, unit_ids, last_unit = filler.fill(tok, room)

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
    return Assembled("".join(text_parts), ids_out, context_tokens, positions, last_unit, prefix_text)


def frame(tok: PromptTokenizer, head: str, body_texts: list[str], body_ids: list[tuple[int, ...]] | list[list[int]],
          tail: str, answer_prefix: str = "") -> tuple[str, list[int]]:
    """Content text and prompt ids for a body whose pieces were fitted by the caller (word lists)."""
    ids = list(tok.frame.prefix_ids) + tok.encode(head)
    for piece in body_ids:
        ids.extend(piece)
    ids.extend(tok.encode(tail))
    ids.extend(tok.frame.suffix_ids)
    ids.extend(tok.answer_prefix_ids(answer_prefix)[1])
    return head + "".join(body_texts) + tail, ids


def fixed_cost(tok: PromptTokenizer, head: str, tail: str, answer_prefix: str = "") -> int:
    """Tokens taken by the chat frame, the head, the tail and the answer prefix of a prompt."""
    return (len(tok.frame.prefix_ids) + len(tok.encode(head)) + len(tok.encode(tail)) + len(tok.frame.suffix_ids)
            + len(tok.answer_prefix_ids(answer_prefix)[1]))
