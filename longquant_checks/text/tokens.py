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
_SYSTEM_SENTINEL = "\u2063LQ-SYSTEM\u2063"
_ANSWER_SENTINEL = "\u2063LQ-ANSWER\u2063"
MODEL_DEFAULT = "model-default"


class TokenizerError(LongquantError, ValueError):
    """The tokenizer cannot be loaded or its chat template cannot frame a prompt."""


@dataclass(frozen=True)
class PromptStyle:
    """How a prompt is framed for the model, beyond its content: part of every sample's identity.

    system_prompt: None for no system turn (the source studies: one user turn), MODEL_DEFAULT for whatever the chat
    template does with a lone user turn (SmolLM2's inserts its own 24-token system prompt), or a custom text.
    answer_prefix: start the assistant turn with the answer's first words (RULER, lm-eval), where the chat template
    allows a prefilled assistant turn."""

    system_prompt: str | None = None
    answer_prefix: bool = True

    def describe(self) -> dict[str, Any]:
        system = "none" if self.system_prompt is None else (
            MODEL_DEFAULT if self.system_prompt == MODEL_DEFAULT else {"text": self.system_prompt})
        return {"system_prompt": system, "answer_prefix": self.answer_prefix}


@dataclass(frozen=True)
class ChatFrame:
    """Chat-template text and ids around the user's content (one user turn, generation prompt added)."""

    prefix_text: str
    suffix_text: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    system_text: str | None = None  # the system turn's text in the prefix, if any (the template's own or custom)
    prefill: bool = False  # the template continues a started assistant turn verbatim (an answer prefix is possible)


class PromptTokenizer:
    """Wraps a Hugging Face (fast) tokenizer: exact piece ids with a per-text cache."""

    def __init__(self, hf_tokenizer: Any, name: str = "", use_chat_template: bool = True,
                 style: PromptStyle | None = None):
        self.hf = hf_tokenizer
        self.name = name or getattr(hf_tokenizer, "name_or_path", "") or "tokenizer"
        self.use_chat_template = use_chat_template and bool(getattr(hf_tokenizer, "chat_template", None))
        self.style = style or PromptStyle()
        self._cache: dict[str, tuple[int, ...]] = {}
        self.frame = self._make_frame()
        self.fingerprint = self._fingerprint()

    @classmethod
    def from_pretrained(cls, source: str | Path, use_chat_template: bool = True,
                        trust_remote_code: bool = False, style: PromptStyle | None = None) -> "PromptTokenizer":
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises OSError/ValueError/... for a bad source
            raise TokenizerError(f"cannot load a tokenizer from {source!r}: {type(exc).__name__}: {exc}") from exc
        return cls(hf, name=str(source), use_chat_template=use_chat_template, style=style)

    # -- frame ---------------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        try:
            return self.hf.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as exc:  # a template may refuse a role (some have no system turn)
            roles = "+".join(m["role"] for m in messages)
            raise TokenizerError(f"{self.name}: the chat template cannot render a {roles} conversation: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _split(self, rendered: str, sentinel: str, what: str) -> tuple[str, str]:
        if rendered.count(sentinel) != 1:
            raise TokenizerError(f"{self.name}: the chat template does not place the {what} verbatim once; "
                                 "use use_chat_template=False for this model")
        before, after = rendered.split(sentinel)
        return before, after

    def _make_frame(self) -> ChatFrame:
        if not self.use_chat_template:
            return ChatFrame("", "", (), ())
        user = {"role": "user", "content": _SENTINEL}
        system = self.style.system_prompt
        if system is None:
            prefix, suffix, default = self._prefix_without_system(user)
            system_text = None
        elif system == MODEL_DEFAULT:
            prefix, suffix = self._split(self._render([user], add_generation_prompt=True), _SENTINEL, "user content")
            default = self._injected_system(user, prefix)
            system_text = default
        else:
            prefix, suffix = self._split(
                self._render([{"role": "system", "content": system}, user], add_generation_prompt=True),
                _SENTINEL, "user content")
            system_text = system
        return ChatFrame(prefix, suffix, tuple(self.encode(prefix)), tuple(self.encode(suffix)), system_text,
                         self._allows_prefill(prefix + _SENTINEL + suffix, system_text))

    def _injected_system(self, user: dict[str, str], prefix: str) -> str | None:
        """The system prompt the template writes on its own before a lone user turn (None if it writes none)."""
        try:
            rendered = self._render([{"role": "system", "content": _SYSTEM_SENTINEL}, user], add_generation_prompt=True)
        except TokenizerError:
            return None  # no system role at all: nothing can have been injected
        before, after = self._split(rendered, _SYSTEM_SENTINEL, "system content")
        after = after.split(_SENTINEL)[0]
        if prefix.startswith(before) and prefix.endswith(after) and len(prefix) > len(before) + len(after):
            return prefix[len(before):len(prefix) - len(after)]
        return None

    def _prefix_without_system(self, user: dict[str, str]) -> tuple[str, str, str | None]:
        """The frame of a lone user turn with no system turn, also where the template would insert its own: that
        turn is cut out (its header found as the one that, with `system` read as `user`, heads the user turn)."""
        prefix, suffix = self._split(self._render([user], add_generation_prompt=True), _SENTINEL, "user content")
        default = self._injected_system(user, prefix)
        if default is None:
            return prefix, suffix, None
        before, after = self._split(
            self._render([{"role": "system", "content": _SYSTEM_SENTINEL}, user], add_generation_prompt=True),
            _SYSTEM_SENTINEL, "system content")
        between = after.split(_SENTINEL)[0]  # system turn's end + the user turn's header
        for start in range(len(before)):
            header = before[start:]
            if "system" in header and between.endswith(user_header := header.replace("system", "user")):
                return before[:start] + user_header, suffix, default
        raise TokenizerError(f"{self.name}: the chat template inserts its own system prompt ({default[:60]!r}) and "
                             "its system turn could not be cut out; set system_prompt = \"model-default\" (keep "
                             "it) or give a system prompt text")

    def _allows_prefill(self, rendered_user: str, system_text: str | None) -> bool:
        """Whether the template renders a started assistant turn as the generation prompt + its text, unclosed."""
        messages = ([{"role": "system", "content": system_text}] if system_text is not None
                    and self.style.system_prompt not in (None, MODEL_DEFAULT) else [])
        messages += [{"role": "user", "content": _SENTINEL}, {"role": "assistant", "content": _ANSWER_SENTINEL}]
        try:
            rendered = self._render(messages, continue_final_message=True)
        except TokenizerError:
            return False
        if self.style.system_prompt is None:
            return False if not rendered.endswith(_ANSWER_SENTINEL) else self._same_turns(rendered, rendered_user)
        return rendered == rendered_user + _ANSWER_SENTINEL

    def _same_turns(self, rendered: str, rendered_user: str) -> bool:
        """For a frame whose system turn was cut out: the assistant turn opens exactly as our suffix ends."""
        suffix = rendered_user.split(_SENTINEL)[1]
        return rendered.endswith(_SENTINEL + suffix + _ANSWER_SENTINEL)

    def prompt_record(self) -> dict[str, Any]:
        """The prompt style as it took effect, for samples, results and baselines."""
        return {"system_prompt": self.style.describe()["system_prompt"],
                "answer_prefix": self.style.answer_prefix and self.frame.prefill}

    def messages(self, content: str, answer_prefix: str = "") -> list[dict[str, str]]:
        """The prompt as chat messages, for text-only servers: system turn (custom text only), user turn, and the
        started assistant turn when there is an answer prefix."""
        out = []
        if self.style.system_prompt not in (None, MODEL_DEFAULT):
            out.append({"role": "system", "content": self.style.system_prompt})
        out.append({"role": "user", "content": content})
        if answer_prefix:
            out.append({"role": "assistant", "content": answer_prefix})
        return out

    def answer_prefix_ids(self, text: str) -> tuple[str, list[int]]:
        """The answer prefix as it goes into the prompt: ('', []) when the style has none or the template cannot
        start an assistant turn."""
        if not text or not self.style.answer_prefix or not self.frame.prefill:
            return "", []
        return text, self.encode(text)

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
        parts = [vocab, self.frame.prefix_text, self.frame.suffix_text, str(self.use_chat_template),
                 json.dumps(self.style.describe(), sort_keys=True), str(self.frame.prefill)]
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
