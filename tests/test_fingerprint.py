"""Identity (issue 10): a result belongs to exactly the bytes and settings that made it.

Tiny checkpoints built here (a config and one 2x2 float32 tensor); no model, no network.
"""

import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from longquant_checks.checkpoints.spec import fingerprint

# Linear input dims 96, 256 and 3 x 32: 128 and 64 do not divide 96, so the group size chosen is 32.
CONFIG = {"model_type": "llama", "hidden_size": 96, "intermediate_size": 256, "num_attention_heads": 3}
MAIN, V1 = "a" * 40, "b" * 40


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def settled(monkeypatch):
    """Cache digests of files written a moment ago (the real rule waits a second after a file's last change)."""
    from longquant_checks.checkpoints import digest

    monkeypatch.setattr(digest, "_SETTLE_NS", 0)


@pytest.fixture
def reads(monkeypatch):
    """The weight files actually read (hashed), in order."""
    from longquant_checks.checkpoints import digest

    seen = []
    real = digest.hash_file
    monkeypatch.setattr(digest, "hash_file", lambda path: seen.append(path.name) or real(path))
    return seen


def make_checkpoint(folder, values, config=CONFIG):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": np.asarray(values, np.float32).reshape(2, 2)}, str(folder / "model.safetensors"))
    return folder


def header(path):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[: 8 + length]


def test_same_names_sizes_and_headers_but_other_weights_are_another_checkpoint(tmp_path):
    """A re-quantization with the same shapes (other calibration, other damping) differs only in tensor values."""
    a = make_checkpoint(tmp_path / "a", [1, 2, 3, 4])
    b = make_checkpoint(tmp_path / "b", [1, 2, 3, 5])
    wa, wb = a / "model.safetensors", b / "model.safetensors"
    assert wa.stat().st_size == wb.stat().st_size and header(wa) == header(wb)
    assert fingerprint(a) != fingerprint(b)
    shutil.copytree(a, tmp_path / "copy")
    assert fingerprint(tmp_path / "copy") == fingerprint(a)  # the bytes, not the path


def test_a_weight_file_is_read_once_until_it_changes(tmp_path, settled, reads):
    ckpt = make_checkpoint(tmp_path / "ckpt", [1, 2, 3, 4])
    weights = ckpt / "model.safetensors"
    first = fingerprint(ckpt)
    assert fingerprint(ckpt) == first and reads == ["model.safetensors"]
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    assert fingerprint(ckpt) == first and len(reads) == 2
    # Edited in place, same size, mtime put back: utime cannot put ctime back, so it is read again.
    time.sleep(0.02)  # past a coarse timestamp tick (4-10 ms) where the kernel has them
    st = weights.stat()
    with open(weights, "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(np.float32(9).tobytes())
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    edited = fingerprint(ckpt)
    assert edited != first and len(reads) == 3
    # Replaced the way writers save (a new file renamed over the old one): a new inode.
    save_file({"w": np.asarray([1, 2, 3, 4], np.float32).reshape(2, 2)}, str(tmp_path / "new.safetensors"))
    os.replace(tmp_path / "new.safetensors", weights)
    assert fingerprint(ckpt) == first and len(reads) == 4
    assert fingerprint(ckpt) == first and len(reads) == 4


def test_a_file_changed_a_moment_ago_is_hashed_but_not_yet_cached(tmp_path, reads, monkeypatch):
    """Where timestamps are coarse a second write in the same tick keeps the stamp: wait for the file to settle."""
    from longquant_checks.checkpoints import digest

    ckpt = make_checkpoint(tmp_path / "ckpt", [1, 2, 3, 4])
    assert fingerprint(ckpt) == fingerprint(ckpt) and len(reads) == 2
    monkeypatch.setattr(digest, "_SETTLE_NS", 0)  # as if a second had passed
    fingerprint(ckpt), fingerprint(ckpt)
    assert len(reads) == 3


def test_a_corrupt_digest_cache_is_recomputed_and_digests_name_their_algorithm(tmp_path, cache, settled, reads):
    from longquant_checks.checkpoints import digest

    ckpt = make_checkpoint(tmp_path / "ckpt", [1, 2, 3, 4])
    weights = ckpt / "model.safetensors"
    first = fingerprint(ckpt)
    (entry,) = (cache / "digests").glob("*.json")
    good = json.loads(entry.read_text())
    assert good["digest"] == digest.file_digest(weights) and good["digest"].startswith("blake3:")
    for garbage in (b"", b"{not json", b"[]", b'{"digest": 5}', b"\xff\xfe",
                    json.dumps({**good, "digest": "sha256:" + "0" * 64}).encode()):  # another algorithm's digest
        entry.write_bytes(garbage)
        assert fingerprint(ckpt) == first
        assert json.loads(entry.read_text()) == good  # rewritten
    assert len(reads) == 7


# -- hub ids resolve to a commit ------------------------------------------------------------------------------------

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A hub cache holding acme/tiny at two commits (main and tag v1), with the network off."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny"
    make_checkpoint(repo / "snapshots" / MAIN, [1, 2, 3, 4])
    make_checkpoint(repo / "snapshots" / V1, [1, 2, 3, 5])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v1").write_text(V1)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both once, at import: an imported one needs its constants set too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def test_hub_ids_parse_with_an_optional_revision():
    from longquant_checks.checkpoints.resolve import parse_hub_id

    assert parse_hub_id("acme/tiny") == ("acme/tiny", None)
    assert parse_hub_id("acme/tiny@v1") == ("acme/tiny", "v1")
    assert parse_hub_id(f"acme/tiny@{V1}") == ("acme/tiny", V1)
    assert parse_hub_id("acme/tiny@refs/pr/3") == ("acme/tiny", "refs/pr/3")
    for not_hub in ("./acme/tiny", "/abs/path", "acme/tiny/extra", "acme/tiny@", "acme/tiny@../../etc"):
        assert parse_hub_id(not_hub) is None, not_hub


def test_a_hub_id_resolves_offline_to_its_commit_and_records_it(offline_hub, tmp_path):
    from longquant_checks.checkpoints.resolve import CheckpointError, resolve

    main = resolve("hubbed", source="acme/tiny")
    assert main.revision == MAIN and main.path.endswith(f"snapshots/{MAIN}")
    assert set(main.identity) == {"name", "fingerprint", "revision", "recipe", "produced", "precision"}
    assert main.identity["revision"] == MAIN
    v1 = resolve("pinned", source="acme/tiny@v1")
    assert v1.revision == V1 and v1.fingerprint != main.fingerprint
    assert resolve("by-sha", source=f"acme/tiny@{V1}").revision == V1
    assert resolve("local", source=str(offline_hub / "models--acme--tiny" / "snapshots" / V1)).revision is None
    inflight = resolve("nf4", recipe="bnb-nf4", reference="acme/tiny@v1")
    assert inflight.revision == V1 and inflight.recipe == "bnb-nf4"
    with pytest.raises(CheckpointError, match="cannot download hub id acme/tiny@v2 and it is not in the local hub"):
        resolve("missing", source="acme/tiny@v2")


# -- produced recipes: the key follows what was fed in and what fed it ----------------------------------------------

@pytest.fixture
def fake_quantizer(tmp_path, monkeypatch):
    """A stand-in for the .venv-quant Python: answers the version query, and 'quantizes' by copying the reference."""
    script = tmp_path / "fake-quant-python"
    script.write_text(f"#!{sys.executable}\n" + """
import json, os, shutil, sys
if sys.argv[1] == "-c":
    names = ("llmcompressor", "compressed-tensors", "transformers", "torch")
    print(json.dumps({n: os.environ.get("FAKE_LLMCOMPRESSOR", "1.0") for n in names}))
else:
    job = json.load(open(sys.argv[2]))
    shutil.copytree(job["reference"], job["output"])
""")
    script.chmod(0o755)
    monkeypatch.setenv("LONGQUANT_QUANT_PYTHON", str(script))
    monkeypatch.setenv("FAKE_LLMCOMPRESSOR", "0.14.0.1")


def test_a_produced_checkpoint_follows_its_calibration_content_and_quantizer(tmp_path, fake_quantizer, monkeypatch):
    from longquant_checks.checkpoints import produce as P
    from longquant_checks.checkpoints.resolve import resolve

    ref = make_checkpoint(tmp_path / "ref", [1, 2, 3, 4])
    fed = {"ids": [[1, 2, 3] * 10]}
    monkeypatch.setattr(P, "calibration_ids", lambda reference, spec: fed["ids"])
    spec = P.CalibrationSpec(samples=1, tokens=30)
    first = P.produce(ref, "gptq-w4a16", spec)
    assert P.produce(ref, "gptq-w4a16", spec) == first  # cached
    fed["ids"] = [[1, 2, 4] * 10]  # same spec, other content (another generator, language file or text)
    other_calibration = P.produce(ref, "gptq-w4a16", spec)
    assert other_calibration != first
    monkeypatch.setenv("FAKE_LLMCOMPRESSOR", "0.15.0")
    other_quantizer = P.produce(ref, "gptq-w4a16", spec)
    assert other_quantizer not in (first, other_calibration)
    produced = resolve("w4", recipe="gptq-w4a16", reference=str(ref), calibration=spec).identity["produced"]
    assert produced["params"] == {"scheme": "W4A16", "group_size": 32}
    assert produced["calibration_ids_sha256"] == P.calibration_digest(fed["ids"])
    assert produced["quantizer"]["llmcompressor"] == "0.15.0"
    assert produced["reference"] == fingerprint(ref)
