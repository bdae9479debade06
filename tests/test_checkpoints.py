"""Checkpoint specs, fingerprints, precision classes and the recipe support table."""

import json
import shutil

import pytest

from longquant_checks.checkpoints.recipes import RECIPES, get_recipe, unsupported_reason
from longquant_checks.checkpoints.spec import CheckpointError, CheckpointSpec, fingerprint, infer_precision
from longquant_checks.errors import UnknownValueError


def test_spec_needs_a_source_or_a_recipe_on_a_reference():
    assert CheckpointSpec("ref", source="demo").source == "demo"
    assert CheckpointSpec("nf4", reference="demo", recipe="bnb-nf4").recipe == "bnb-nf4"
    with pytest.raises(CheckpointError, match="give exactly one of `source`"):
        CheckpointSpec("x")
    with pytest.raises(CheckpointError, match="needs a `reference`"):
        CheckpointSpec("x", recipe="bnb-nf4")
    with pytest.raises(CheckpointError, match="precision '3-bit' is not one of 16-bit, 8-bit, 4-bit"):
        CheckpointSpec("x", source="p", precision="3-bit")


@pytest.fixture
def checkpoint_copy(tmp_path, demo_path):
    """A copy of the demo checkpoint with the weights hard-linked (cheap)."""
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for f in demo_path.iterdir():
        if f.suffix == ".safetensors":
            (copy / f.name).hardlink_to(f)
        elif f.is_file():
            shutil.copy(f, copy / f.name)
    return copy


def test_fingerprint_ignores_a_resave_by_another_transformers(checkpoint_copy, demo_path):
    """Another transformers version re-saving config.json (its stamp, key order, indentation) is the same checkpoint:
    baselines must not go stale when a user upgrades transformers."""
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["transformers_version"] = "9.99.0"
    (checkpoint_copy / "config.json").write_text(json.dumps(dict(reversed(list(config.items())))))
    assert fingerprint(checkpoint_copy) == fingerprint(demo_path)
    config["max_position_embeddings"] = 4096
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(checkpoint_copy) != fingerprint(demo_path)


def test_fingerprint_is_stable_and_sees_config_tokenizer_and_weights(checkpoint_copy, demo_path):
    assert fingerprint(checkpoint_copy) == fingerprint(demo_path)
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 50000.0
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    changed_config = fingerprint(checkpoint_copy)
    assert changed_config != fingerprint(demo_path)
    (checkpoint_copy / "chat_template.jinja").write_text("{{ messages }}")
    assert fingerprint(checkpoint_copy) != changed_config


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="only pickled weights .*safetensors only"):
        fingerprint(tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        fingerprint(tmp_path / "nothing")


@pytest.mark.parametrize("config, expected", [
    ({}, "16-bit"),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, "4-bit"),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}, "8-bit"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 8}}, "8-bit"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "4-bit"),
    ({"quantization_config": {"quant_method": "fp8"}}, "8-bit"),
    ({"quantization_config": {"quant_method": "compressed-tensors",
                              "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}}}}, "4-bit"),
    ({"quantization_config": {"quant_method": "compressed-tensors",
                              "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}}}}, "8-bit"),
])
def test_precision_inferred_from_quantization_config(config, expected):
    assert infer_precision(config) == expected


def test_unknown_quantization_asks_for_an_explicit_precision():
    with pytest.raises(CheckpointError, match="set `precision`"):
        infer_precision({"quantization_config": {"quant_method": "mystery"}})


def test_support_table_skips_with_reasons():
    assert "4-bit only" in unsupported_reason("gptq-w8a16", "vllm", "cpu")
    assert unsupported_reason("gptq-w8a16", "vllm", "cuda:0") is None
    assert "no bitsandbytes" in unsupported_reason("bnb-nf4", "vllm", "cuda")
    assert unsupported_reason("bnb-nf4", "hf", "cpu") is None
    assert "needs CUDA" in unsupported_reason("fp8-inflight", "vllm", "cpu")
    assert unsupported_reason(None, "vllm", "cpu") is None
    assert {r.precision for r in RECIPES.values()} == {"8-bit", "4-bit"}
    with pytest.raises(UnknownValueError, match="unknown recipe 'int3'"):
        get_recipe("int3")


def test_calibration_from_a_users_file(demo_path, tmp_path):
    """Calibration from the user's own text: JSONL of {"text": ...} or .txt, cut into `tokens`-long pieces; the cache
    key follows the content, not the path; bad lines and missing files are named."""
    from longquant_checks.checkpoints.produce import CalibrationSpec, QuantizeError, calibration_ids

    text = "The quick brown fox jumps over the lazy dog. " * 40
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": text}) for _ in range(3)) + "\n\n")
    spec = CalibrationSpec(samples=4, tokens=64, file=str(jsonl))
    ids = calibration_ids(demo_path, spec)
    assert len(ids) == 4 and all(len(piece) == 64 for piece in ids)
    txt = tmp_path / "calib.txt"
    txt.write_text(text)
    assert calibration_ids(demo_path, CalibrationSpec(samples=2, tokens=64, file=str(txt))) == ids[:2]
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(jsonl.read_bytes())
    key = spec.key()
    assert CalibrationSpec(samples=4, tokens=64, file=str(copy)).key() == key
    jsonl.write_text(json.dumps({"text": text + " more"}) + "\n")
    assert CalibrationSpec(samples=4, tokens=64, file=str(jsonl)).key() != key
    jsonl.write_text('{"text": "fine"}\n{"prompt": "no text key"}\n')
    with pytest.raises(QuantizeError, match='line 2: expected a JSON object with a "text" string'):
        calibration_ids(demo_path, CalibrationSpec(file=str(jsonl)))
    with pytest.raises(QuantizeError, match="calibration file .*nowhere.jsonl.*JSONL"):
        calibration_ids(demo_path, CalibrationSpec(file=str(tmp_path / "nowhere.jsonl")))


def test_bad_checkpoints_are_one_clear_error_each(checkpoint_copy, monkeypatch):
    """An architecture the engine does not know, a quantization it cannot run here, a hub id without network."""
    from longquant_checks.checkpoints.resolve import check_engine_can_run, local_path

    config = json.loads((checkpoint_copy / "config.json").read_text())
    (checkpoint_copy / "config.json").write_text(json.dumps({**config, "model_type": "mystery_lm"}))
    with pytest.raises(CheckpointError, match="model_type='mystery_lm' is not known.*trust_remote_code"):
        check_engine_can_run(checkpoint_copy, "odd", "hf", "cpu")
    bnb = {**config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    (checkpoint_copy / "config.json").write_text(json.dumps(bnb))
    with pytest.raises(CheckpointError, match="quantization_config \\(bitsandbytes\\) cannot run on engine 'vllm'"):
        check_engine_can_run(checkpoint_copy, "nf4", "vllm", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="cannot download hub id nobody/no-such-model.*give the folder"):
        local_path("nobody/no-such-model", "remote")
