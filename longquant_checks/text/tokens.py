"""The model's tokenizer, as the prompt builder needs it: chat-template frame, cached unit ids, fingerprint.

Prompts are built as token ids: chat-template prefix + body pieces + chat-template suffix. Each piece
is tokenized on its own (haystack sentences once per tokenizer and text), so lengths are exact by
construction and no whole prompt is ever re-tokenized. The text form of the same prompt is kept for
logs and text-only servers; re-tokenizing that text can differ by a few tokens at piece boundaries,
which is why engines that accept token ids are given the ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import LongquantError

_SENTINEL = "\u2063LQ-CONTENT\u2063"  # invisible separator: never produced by a template


class TokenizerError(LongquantError, ValueError):
    """The tokenizer cannot be loaded or its chat template cannot frame a prompt."""


@dataclass(frozen=True)
class ChatFrame:
    """Chat-template text and ids around the user's content (one user turn, generation prompt added)."""

    prefix_text: str
    suffix_text: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]


class PromptTokenizer:
    """Wraps a Hugging Face (fast) tokenizer: exact piece ids with a per-text cache."""

    def __init__(self, hf_tokenizer: Any, name: str = "", use_chat_template: bool = True):
        self.hf = hf_tokenizer
        self.name = name or getattr(hf_tokenizer, "name_or_path", "") or "tokenizer"
        self.use_chat_template = use_chat_template and bool(getattr(hf_tokenizer, "chat_template", None))
        self._cache: dict[str, tuple[int, ...]] = {}
        self.frame = self._make_frame()
        self.fingerprint = self._fingerprint()

    @classmethod
    def from_pretrained(cls, source: str | Path, use_chat_template: bool = True,
                        trust_remote_code: bool = False) -> "PromptTokenizer":
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises OSError/ValueError/... for a bad source
            raise TokenizerError(f"cannot load a tokenizer from {source!r}: {type(exc).__name__}: {exc}") from exc
        return cls(hf, name=str(source), use_chat_template=use_chat_template)

    # -- frame ---------------------------------------------------------------------------------
    def _make_frame(self) -> ChatFrame:
        if not self.use_chat_template:
            return ChatFrame("", "", (), ())
        rendered = self.hf.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise TokenizerError(
                f"{self.name}: the chat template does not place the user content verbatim once; "
                "use use_chat_template=False for this model"
            )
        prefix, suffix = rendered.split(_SENTINEL)
        return ChatFrame(prefix, suffix, tuple(self.encode(prefix)), tuple(self.encode(suffix)))

    def render(self, content: str) -> str:
        """The chat-templated text of one user turn (what text-only servers would see)."""
        return self.frame.prefix_text + content + self.frame.suffix_text

    # -- ids ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        # Special tokens written in template text (e.g. <|im_start|>) are parsed as such; none are added.
        return list(self.hf(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode_many(self, texts: Sequence[str], cache: bool = True) -> list[tuple[int, ...]]:
        """Ids of each text; one batched call for the texts not seen before (cached when `cache`)."""
        if not cache:
            if not texts:
                return []
            return [tuple(ids) for ids in self.hf(list(texts), add_special_tokens=False)["input_ids"]]
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, ids in zip(missing, self.hf(missing, add_special_tokens=False)["input_ids"]):
                self._cache[text] = tuple(ids)
        return [self._cache[t] for t in texts]

    def count(self, texts: Iterable[str]) -> int:
        return sum(len(ids) for ids in self.encode_many(list(texts)))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def word_prefix(self, text: str, limit: int) -> tuple[tuple[int, ...], str]:
        """The longest prefix of `text` that ends at a word boundary and takes at most `limit` tokens, with its
        ids (the prefix tokenized on its own: exact). ((), "") if not even the first word fits."""
        ids, cut, _ = self.best_word_cut([text], limit)
        return ids, cut

    def word_cuts(self, texts: Sequence[str], limit: int) -> list[dict[int, int]]:
        """For each text, its word-boundary prefixes of at most `limit` tokens: {token count: cut position}. A word
        boundary is the end of the text, a position before whitespace, or one between two characters of a script
        written without spaces (Han, Kana). Counts come from one batched tokenization with offsets (a cut no token
        straddles); `exact_prefix` confirms the one chosen."""
        if limit <= 0 or not texts:
            return [{} for _ in texts]
        cuts: list[dict[int, int]] = []
        for text, offsets in zip(texts, self.hf(list(texts), add_special_tokens=False,
                                                return_offsets_mapping=True)["offset_mapping"]):
            found: dict[int, int] = {}
            for count in range(min(limit, len(offsets)), 0, -1):
                cut = offsets[count - 1][1]
                if count < len(offsets) and offsets[count][0] < cut:
                    continue
                if _is_word_boundary(text, cut):
                    found[count] = cut
            cuts.append(found)
        return cuts

    def best_word_cut(self, texts: Sequence[str], limit: int) -> tuple[tuple[int, ...], str, str]:
        """Of the word-boundary prefixes of any of `texts`, the longest that takes at most `limit` tokens: (ids,
        prefix, the text it was cut from); the ids are the prefix tokenized on its own (exact)."""
        options = sorted(((count, -t, cut) for t, found in enumerate(self.word_cuts(texts, limit))
                          for count, cut in found.items()), reverse=True)
        for count, neg_t, cut in options[:8]:
            if (ids := self.exact_prefix(texts[-neg_t], cut, limit)) is not None:
                return ids, texts[-neg_t][:cut], texts[-neg_t]
        return (), "", texts[0] if texts else ""

    def exact_prefix(self, text: str, cut: int, limit: int) -> tuple[int, ...] | None:
        """The ids of text[:cut] tokenized on its own, if they take at most `limit` tokens."""
        ids = tuple(self.encode(text[:cut]))
        return ids if len(ids) <= limit else None

    # -- identity ------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        backend = getattr(self.hf, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else json.dumps(self.hf.get_vocab(), sort_keys=True)
        parts = [vocab, self.frame.prefix_text, self.frame.suffix_text, str(self.use_chat_template)]
        return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def _unspaced(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _is_word_boundary(text: str, cut: int) -> bool:
    if cut <= 0 or text[cut - 1].isspace():
        return False
    if cut >= len(text):
        return True
    before, after = text[cut - 1], text[cut]
    return after.isspace() or (_unspaced(before) and (_unspaced(after) or not after.isalnum()))
