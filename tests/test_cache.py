"""Generated sample sets are cached by what determines them and reloaded byte-identically."""

import pytest

from longquant_checks import Cell, get_task, load_or_generate
from longquant_checks.samples import cache_path


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    return tmp_path


def test_second_request_hits_the_cache_with_identical_prompts(cache_root, tok):
    task, cell = get_task("niah_multikey_1"), Cell("niah_multikey_1", 2048, "pl")
    first, hit1 = load_or_generate(task, cell, tok, 3, 5)
    again, hit2 = load_or_generate(task, cell, tok, 3, 5)
    assert (hit1, hit2) == (False, True)
    assert [s.prompt_token_ids for s in first] == [s.prompt_token_ids for s in again]
    assert [s.prompt_text for s in first] == [s.prompt_text for s in again]
    assert [s.metadata for s in first] == [s.metadata for s in again]


def test_cache_key_covers_n_seed_and_task(cache_root, tok):
    cell = Cell("vt", 1024, "en")
    task = get_task("vt")
    paths = {cache_path(task, cell, tok, 3, 0), cache_path(task, cell, tok, 4, 0), cache_path(task, cell, tok, 3, 1)}
    assert len(paths) == 3


def test_corrupt_cache_entry_is_rebuilt(cache_root, tok):
    task, cell = get_task("fwe"), Cell("fwe", 1024, "en")
    samples, _ = load_or_generate(task, cell, tok, 2, 0)
    path = cache_path(task, cell, tok, 2, 0)
    path.write_bytes(b"not gzip")
    rebuilt, hit = load_or_generate(task, cell, tok, 2, 0)
    assert not hit and [s.prompt_sha256 for s in rebuilt] == [s.prompt_sha256 for s in samples]
    assert load_or_generate(task, cell, tok, 2, 0)[1]  # and the rewritten entry is used next time
