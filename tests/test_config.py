"""Config validation: every error names the key, the bad value and what is accepted."""

import pytest

from longquant_checks.config import ConfigError, find_config, load_config, parse_config


def test_minimal_config_defaults():
    cfg = parse_config({"reference": "demo"})
    g = cfg.gate
    assert g.reference.source == "demo" and g.engine == "hf" and g.samples == 50 and g.mode == "default"
    assert g.tasks == ["niah_single_1"] and g.buckets == [4096] and g.languages == ["en"]
    assert cfg.reference_name == "SmolLM2-135M-Instruct"


def test_all_expands_and_buckets_parse():
    g = parse_config({"reference": "x/y", "tasks": "all", "buckets": ["2k", 8192], "languages": "all"}).gate
    assert len(g.tasks) == 15 and g.buckets == [2048, 8192] and len(g.languages) == 26


@pytest.mark.parametrize("data,expected", [
    ({"reference": "demo", "mode": "fast"}, "mode: Input should be 'default', 'strict' or 'point' (got 'fast')"),
    ({"reference": "demo", "tasks": ["niah_single_9"]}, "unknown task 'niah_single_9'; accepted: niah_single_1"),
    ({"reference": "demo", "buckets": ["3K"]}, "unknown bucket '3K'; accepted: 1K, 2K"),
    ({"reference": "demo", "languages": ["xx"]}, "unknown language 'xx'; accepted: "),
    ({"reference": "demo", "samples": 0}, "samples: Input should be greater than or equal to 1 (got 0)"),
    ({"reference": "demo", "engne": "hf"}, "engne: unknown key"),
    ({}, "reference: Field required"),
    ({"reference": "demo", "candidates": [{"name": "a-b", "recipe": "bnb-nf4"}]}, "candidates['a-b'].name: use letters"),
    ({"reference": "demo", "candidates": [{"name": "q", "recipe": "gptq-w3"}]},
     "candidates['q'].recipe: unknown recipe; accepted: bnb-int8"),
    ({"reference": "demo", "candidates": [{"name": "q"}]}, "give exactly one of `source`"),
    ({"reference": "demo", "candidates": [{"name": "q", "recipe": "bnb-nf4"}, {"name": "q", "recipe": "bnb-int8"}]},
     "candidate names must be unique; repeated: q"),
    ({"reference": "demo", "tolerance": {"rules": [{"task": "vt"}]}}, "give exactly one of `points`"),
    ({"reference": "demo", "tolerance": {"cell": {"3-bit": 1}}}, "tolerance.cell.3-bit"),
])
def test_errors_name_key_value_and_accepted(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value), str(info.value)


def test_files_toml_pyproject_and_bad_toml(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.longquant]\nreference = "demo"\nsamples = 7\n')
    assert find_config(tmp_path) == tmp_path / "pyproject.toml"
    assert load_config(tmp_path / "pyproject.toml").gate.samples == 7
    (tmp_path / "longquant.toml").write_text('reference = "demo"\nbaseline_dir = "b"\n')
    assert find_config(tmp_path) == tmp_path / "longquant.toml"
    cfg = load_config(tmp_path / "longquant.toml")
    assert cfg.baseline_dir == tmp_path / "b"  # relative to the config file
    (tmp_path / "bad.toml").write_text("reference = \n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text("[tool.black]\n")
    with pytest.raises(ConfigError, match=r"no \[tool.longquant\] table"):
        load_config(tmp_path / "other" / "pyproject.toml")


def test_tolerance_rules_become_gate_rules():
    cfg = parse_config({"reference": "demo", "tasks": ["cwe"], "languages": ["en", "sw"], "tolerance": {"rules": [
        {"task": "cwe", "bucket": "4K", "precision": "4-bit", "points": 15},
        {"language": "sw", "relative": 20}]}})
    rules = cfg.tolerance_rules()
    assert rules[0].bucket == 4096 and rules[0].points == 15 and rules[1].relative == 20


@pytest.mark.parametrize("rule, named", [
    ({"task": "cwe", "points": 5}, "task 'cwe' is not in the plan's tasks (niah_single_1)"),
    ({"language": "de", "points": 5}, "language 'de' is not in the plan's languages (en)"),
    ({"bucket": "128K", "points": 5}, "bucket '128K' is not in the plan's buckets (4K)"),
])
def test_tolerance_rule_outside_the_plan_is_an_error(rule, named):
    """A rule that can never apply is a typo: refused, naming the selector and the plan's values."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"reference": "demo", "tolerance": {"rules": [rule]}})
    assert f"tolerance.rules[0]: {named}" in str(exc.value)


def test_not_gated_reasons_are_checked():
    assert parse_config({"reference": "demo", "allow_not_gated": ["too-long"]}).gate.allow_not_gated == ["too-long"]
    with pytest.raises(ConfigError, match="allow_not_gated.0: Input should be 'unsupported', 'too-long', 'no-fit' or 'no-logprobs'"):
        parse_config({"reference": "demo", "allow_not_gated": ["everything"]})
