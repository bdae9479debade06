"""Run one llmcompressor recipe. Executed by the quantizer environment's Python as a plain script.

llmcompressor and vLLM pin different compressed-tensors/transformers, so this file imports nothing
from longquant_checks: it reads a JSON job (reference path, recipe params, calibration token ids,
output folder), quantizes, and saves a compressed-tensors checkpoint.
"""

import json
import sys


def build_recipe(params):
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    scheme = params["scheme"]
    ignore = ["lm_head"]
    if scheme == "FP8_DYNAMIC":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if scheme == "W8A8":
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=params.get("smoothing", 0.8)),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore)]
    if scheme in ("W4A16", "W8A16"):
        bits = 4 if scheme == "W4A16" else 8
        weights = {"num_bits": bits, "type": "int", "symmetric": True}
        if params.get("group_size"):
            weights.update(strategy="group", group_size=params["group_size"])
        else:
            weights.update(strategy="channel")
        return [GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=ignore)]
    if scheme == "W4A16_ASYM":  # AWQ: a smoothing transform, then asymmetric int4 groups
        from llmcompressor.modifiers.transform.awq import AWQModifier

        weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                   "group_size": params["group_size"]}
        return [AWQModifier(n_grid=params.get("n_grid", 20)),
                QuantizationModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                                     ignore=ignore)]
    raise SystemExit(f"unknown scheme {scheme}")


def allow_awq_without_accelerator():
    """llmcompressor 0.14's AWQ pins cached activations for faster host-to-device copies; on a CPU-only torch
    `Tensor.pin_memory()` raises ("Cannot access accelerator device"). Pinning only speeds transfers, so
    skip it when there is no accelerator. Drop this when upstream checks for one."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def main(job_path):
    job = json.load(open(job_path, encoding="utf-8"))
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Calibrate in float32 where the CPU has no native bf16 (emulated bf16 is ~100x slower there), then save
    # in bf16 like the reference.
    compute = getattr(torch, job.get("compute_dtype", "bfloat16"))
    model = AutoModelForCausalLM.from_pretrained(job["reference"], dtype=compute, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(job["reference"])
    recipe = build_recipe(job["params"])
    if job["params"]["scheme"] == "W4A16_ASYM":
        allow_awq_without_accelerator()
    calibration = job["calibration_ids"]
    kwargs = {}
    if calibration:
        kwargs = {"dataset": Dataset.from_dict({"input_ids": calibration,
                                                "attention_mask": [[1] * len(x) for x in calibration]}),
                  "num_calibration_samples": len(calibration),
                  "max_seq_length": max(len(x) for x in calibration)}
    oneshot(model=model, recipe=recipe, **kwargs)
    if compute != torch.bfloat16:
        model.to(torch.bfloat16)
    model.save_pretrained(job["output"], save_compressed=True)
    tokenizer.save_pretrained(job["output"])
    import llmcompressor

    print(json.dumps({"llmcompressor": llmcompressor.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])
