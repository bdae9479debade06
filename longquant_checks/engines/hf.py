"""transformers engine: greedy generate on token-id prompts, batched with left padding.

The prompts arrive as token ids (chat template included), so nothing is re-tokenized here.
"""

from __future__ import annotations

import gc
import time
import warnings
from typing import Iterable, Iterator, Sequence

from ..divergence import TokenTrace, forced_from_logprobs, trace_from_logprobs
from ..schema import Sample
from .base import Engine, EngineInfo, Output, Scoring, by_cell, cpu_dtype


class HFEngine(Engine):
    divergence_unavailable = None  # full distributions: exact teacher-forced scores

    def __init__(self, model_path: str, dtype: str = "auto", device: str | None = None, batch_size: int = 4,
                 trust_remote_code: bool = False, max_model_len: int | None = None,
                 inflight: dict | None = None, kv_cache: dict | None = None):
        """`inflight`: a bitsandbytes recipe's params ({"method": "bitsandbytes", "bits": 4|8, ...}).
        `kv_cache`: a quantized KV cache, transformers' QuantizedCache args, e.g. {"backend": "quanto", "nbits": 4}
        (needs optimum-quanto: the `kvquant` extra)."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..meter import read_proc_status, reset_peak_rss

        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()  # this engine's peak, not that of a model loaded earlier in this process
        self._rss_before = read_proc_status().get("VmRSS")
        self._batch_rates: list[tuple[float, float]] = []  # (prompt tokens/s, output tokens/s) per batch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else cpu_dtype()
        kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code, "use_safetensors": True}
        settings = {"dtype": dtype, "batch_size": batch_size, "torch": torch.__version__}
        self.kv_cache = dict(kv_cache) if kv_cache else None
        if self.kv_cache:
            self.kv_cache.setdefault("backend", "quanto")
            if self.kv_cache["backend"] == "quanto":
                try:
                    import optimum.quanto  # noqa: F401
                except ImportError:
                    raise ImportError("a quanto KV cache needs optimum-quanto: pip install -e '.[kvquant]'") from None
            settings["kv_cache"] = dict(self.kv_cache)
        if inflight:
            kwargs["quantization_config"] = self._bitsandbytes_config(inflight, getattr(torch, dtype))
            settings["inflight"] = dict(inflight)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        # bitsandbytes places the quantized model itself; moving it again is not allowed.
        self.model = (model if inflight else model.to(self.device)).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        self.max_model_len = max_model_len or getattr(config, "max_position_embeddings", 0)
        self.batch_size = batch_size  # halved on out-of-memory, kept for later batches (greedy: same answers)
        self.batch_size_reductions: list[int] = []
        self.info = EngineInfo("hf", transformers.__version__, settings, self.device)

    @staticmethod
    def _bitsandbytes_config(params: dict, compute_dtype):
        from transformers import BitsAndBytesConfig

        if params.get("method") != "bitsandbytes":
            raise ValueError(f"the transformers engine loads in flight only with bitsandbytes, not {params}")
        if params.get("bits") == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        # nf4 must be explicit: transformers' default 4-bit type is fp4.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.get("quant_type", "nf4"),
                                  bnb_4bit_compute_dtype=compute_dtype)

    def close(self) -> None:
        if getattr(self, "model", None) is not None:
            self.model = None
            self._release_cache()

    def stream(self, samples: Iterable[Sample], scoring: Scoring | None = None) -> Iterator[tuple[int, Output]]:
        # No continuous batching here: each cell is batched on its own, similar lengths together (small padding),
        # so a cell's batches, and thus its float answers, do not depend on which other cells share the run.
        scoring = scoring or Scoring()
        for group in by_cell(samples):
            forced = [(i, s) for i, s in group if s.id in scoring.forced]
            for position, sample in forced:
                yield position, self._forced_answer(sample, scoring.forced[sample.id])
            rest = [(i, s) for i, s in group if s.id not in scoring.forced]
            if rest:
                yield from self._cell(rest, scoring.top_k)

    def _cell(self, group: list[tuple[int, Sample]], top_k: int = 0) -> Iterator[tuple[int, Output]]:
        order = sorted(group, key=lambda pair: pair[1].n_tokens)
        start = 0
        while start < len(order):
            batch = order[start:start + self.batch_size]
            try:
                outputs = self._generate_batch([s for _, s in batch], top_k)
            except Exception as exc:  # out of memory: halve the batch and retry it (long buckets on small GPUs)
                if not _is_out_of_memory(exc) or len(batch) == 1:
                    if _is_out_of_memory(exc):
                        raise MemoryError(f"one prompt of {batch[0][1].n_tokens} tokens does not fit in memory on "
                                          f"{self.device} even at batch size 1: use a larger device, a smaller "
                                          f"bucket, or the vllm engine (paged KV cache)") from exc
                    raise
                self.batch_size = max(1, len(batch) // 2)
                self.batch_size_reductions.append(self.batch_size)
                self._release_cache()
                continue
            yield from ((position, out) for (position, _), out in zip(batch, outputs))
            start += len(batch)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()

    def _forced_answer(self, s: Sample, trace: TokenTrace) -> Output:
        """The reference's answer teacher-forced through this model in one forward pass over prompt + answer, and
        this model's own greedy answer from the same pass: it agrees with the reference's tokens up to the first
        position where its argmax differs, takes its argmax there, and only from there on is decoded (the prompt's
        cache, cropped to that point, is reused), so the long prompt is computed once for both signals."""
        torch = self._torch
        answer = [int(t) for t in trace.ids[:s.max_new_tokens]]
        if len(answer) < len(trace):
            raise ValueError(f"sample {s.id}: the reference's answer has {len(trace)} tokens, over this sample's "
                             f"budget of {s.max_new_tokens}")
        n_prompt = s.n_tokens
        t0 = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            ids = torch.tensor([s.prompt_token_ids.tolist() + answer], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            rows = out.logits[0, n_prompt - 1:n_prompt - 1 + len(answer)].float().log_softmax(-1)
            forced = forced_from_logprobs(trace, rows.cpu().numpy())
            disagree = [t for t in range(len(answer)) if int(forced.argmax_ids[t]) != answer[t]]
            new = answer[:disagree[0]] + [int(forced.argmax_ids[disagree[0]])] if disagree else list(answer)
            eos = self._eos_ids()
            if new and new[-1] not in eos and len(new) < s.max_new_tokens:
                cache = out.past_key_values
                # Keep prompt + new[:-1]: the last token is fed again (generate needs one uncached token).
                cache.crop(-(cache.get_seq_length() - (n_prompt + len(new) - 1)))
                full = torch.tensor([s.prompt_token_ids.tolist() + new], dtype=torch.long, device=self.device)
                more = self.model.generate(input_ids=full, attention_mask=torch.ones_like(full), past_key_values=cache,
                                           max_new_tokens=s.max_new_tokens - len(new), do_sample=False,
                                           pad_token_id=self.pad_id)
                new += more[0, full.shape[1]:].tolist()
        finish = "length"
        for k, tid in enumerate(new):
            if tid in eos:
                new, finish = new[:k], "stop"
                break
        new = new[:s.max_new_tokens]
        elapsed = time.perf_counter() - t0
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if elapsed > 0:
            self._batch_rates.append((n_prompt / elapsed, len(new) / elapsed))
        return Output(s.id, text, n_prompt, len(new), elapsed, finish, forced=forced)

    def _generate_batch(self, batch: Sequence[Sample], top_k: int = 0) -> list[Output]:
        torch = self._torch
        budget = max(s.max_new_tokens for s in batch)
        width = max(s.n_tokens for s in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            input_ids[row, width - s.n_tokens:] = torch.tensor(s.prompt_token_ids.tolist())
            attention[row, width - s.n_tokens:] = 1
        t0 = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")  # once per matmul with int8
            generated = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                max_new_tokens=budget, do_sample=False, pad_token_id=self.pad_id,
                **({"cache_implementation": "quantized", "cache_config": dict(self.kv_cache)} if self.kv_cache else {}),
                # The raw logits of each step (before any processor), for the answer's trace.
                **({"output_logits": True, "return_dict_in_generate": True} if top_k else {}),
            )
        step_logits = generated.logits if top_k else None
        generated = generated.sequences if top_k else generated
        elapsed = time.perf_counter() - t0
        seconds = elapsed / len(batch)
        eos_ids = self._eos_ids()
        outputs = []
        for row, s in enumerate(batch):
            new = generated[row, width:].tolist()
            finish, kept = "length", len(new)
            for k, tid in enumerate(new):
                if tid in eos_ids:
                    new, finish, kept = new[:k], "stop", k + 1  # the trace keeps the stop token: stopping counts
                    break
            limit = s.max_new_tokens
            if len(new) > limit:  # a batch-mate had a larger budget
                new, finish, kept = new[:limit], "length", limit
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            trace = None
            if top_k:
                ids = generated[row, width:width + kept].tolist()
                rows = torch.stack([step_logits[t][row] for t in range(kept)]).float().log_softmax(-1)
                trace = trace_from_logprobs(ids, rows.cpu().numpy(), top_k)
            outputs.append(Output(s.id, text, s.n_tokens, len(new), seconds, finish, trace=trace))
        if elapsed > 0:
            self._batch_rates.append((sum(s.n_tokens for s in batch) / elapsed,
                                      sum(o.n_output_tokens for o in outputs) / elapsed))
        return outputs

    def resources(self) -> dict:
        from ..meter import read_proc_status
        from .base import kv_bytes_per_token

        out: dict = {"caveats": []}
        if self.model is not None:  # parameters and buffers as loaded (bitsandbytes: packed)
            out["weights_memory_bytes"] = int(self.model.get_memory_footprint())
        if self.device.startswith("cuda"):
            out.update(peak_memory_bytes=int(self._torch.cuda.max_memory_allocated()), memory_kind="cuda",
                       memory_note="peak of torch's CUDA allocator while this engine ran (weights, activations, "
                                   "KV cache)")
        else:
            status = read_proc_status()
            out.update(peak_memory_bytes=status.get("VmHWM"), memory_kind="rss",
                       memory_note=f"peak resident memory of the process while this engine ran (it held "
                                   f"{(self._rss_before or 0) / 2**20:.0f} MiB before loading: Python, torch, "
                                   "tokenizer)")
        dtype = self.info.settings["dtype"]
        per_token = None if self.model is None else kv_bytes_per_token(self.model.config.to_dict(), dtype)
        note = f"computed from the model config: 2 x layers x KV heads x head size x {dtype} bytes"
        if self.kv_cache and per_token:  # quantized cache: nbits per element (scales and its residual window aside)
            nbits = int(self.kv_cache.get("nbits", 4))
            per_token = kv_bytes_per_token(self.model.config.to_dict(), "int8") * nbits // 8
            note = f"computed from the model config at {nbits} bits per element (scales and the recent tokens kept " \
                   "in full precision not counted)"
        out.update(kv_cache_bytes_per_token=per_token, kv_cache_note=note + " (transformers reports no cache pool)")
        if self._batch_rates:
            prompt, output = zip(*self._batch_rates)
            out["engine_reported"] = {
                "source": "each generate() batch timed on its own",
                "prompt_tokens_per_second": [round(min(prompt), 2), round(max(prompt), 2)],
                "output_tokens_per_second": [round(min(output), 3), round(max(output), 3)]}
        return out

    def _release_cache(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError naming the allocation)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or "out of memory" in text.lower() or "can't allocate memory" in text)


def convert_gguf(gguf_path, out) -> None:
    """Dequantize a GGUF file to a bf16 safetensors checkpoint in folder `out` (the demo model's origin)."""
    import json
    from pathlib import Path

    from ..errors import FetchError

    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise FetchError(f"converting the demo model needs torch, transformers and gguf ({exc}); install them with "
                         "`pip install torch==2.13.0 'longquant-checks[hf]'`") from exc
    gguf_path, out = Path(gguf_path), Path(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.bfloat16)
    except Exception as exc:  # transformers raises many kinds here; all mean "conversion failed"
        raise FetchError(f"transformers could not load {gguf_path.name}: {type(exc).__name__}: {exc}") from exc
    # Clear the GGUF quantization state, or save_pretrained records a quantization it didn't keep.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def known_model_type(model_type: object) -> bool:
    """Whether this transformers has the architecture built in (no remote code needed)."""
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING
