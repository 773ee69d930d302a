"""The one cache layer (`sfsd.cache`): keys carry their artefact's kind and format version, one file hash,
one `versions()`, and nothing outside the package defines its own."""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import pytest
import torch

import sfsd
from sfsd.cache import cache_key, file_sha256, versions

REPO = Path(__file__).resolve().parent.parent


def test_cache_key_carries_kind_format_and_every_field():
    key = cache_key("decompositions", 2, weights="abc", layers=["a", "b"])
    assert key == cache_key("decompositions", 2, layers=["a", "b"], weights="abc")  # field order is irrelevant
    assert len(key) == 16 and int(key, 16) >= 0
    assert cache_key("decompositions", 3, weights="abc", layers=["a", "b"]) != key  # another format
    assert cache_key("statistics", 2, weights="abc", layers=["a", "b"]) != key  # another artefact
    assert cache_key("decompositions", 2, weights="abd", layers=["a", "b"]) != key
    assert cache_key("decompositions", 2, weights="abc", layers=["b", "a"]) != key
    assert cache_key("evaluation", 1, kind="ppl") != cache_key("evaluation", 1, kind="tasks")  # a field `kind`
    with pytest.raises(TypeError):  # a value without a canonical JSON form is refused, not str()-ed
        cache_key("decompositions", 2, path=Path("x"))


def test_file_sha256_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("sfsd.cache.hashing._CHUNK", 7)  # several chunks and a short last one
    data = os.urandom(100)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_versions_are_the_union_of_what_was_recorded():
    found = versions()
    assert set(found) == {"python", "sfsd", "torch", "transformers", "lm_eval"}
    assert found["sfsd"] == sfsd.__version__ and found["torch"] == torch.__version__
    assert all(isinstance(v, str) and v for v in found.values())


def test_hashes_versions_and_model_identities_are_defined_once():
    """No module outside sfsd/cache defines its own file hash, versions() or model identity."""
    names = {"versions", "_versions", "model_fingerprint", "model_identity"}
    found = []
    for path in sorted([*(REPO / "sfsd").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        if path.parent.name == "cache" and path.parent.parent.name == "sfsd":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and (node.name in names or "sha256" in node.name):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert found == []


def test_compress_hashes_the_weights_once(tmp_path, monkeypatch):
    """The decomposition and statistics keys share one fingerprint (hashing a 7B model costs ~10-25 s)."""
    from conftest import tiny_model

    import sfsd.compress
    from sfsd.compress import CalibrationSpec, compress

    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path))
    hashed = []
    fingerprint = sfsd.compress.model_fingerprint
    monkeypatch.setattr(sfsd.compress, "model_fingerprint", lambda model: hashed.append(1) or fingerprint(model))
    compress(tiny_model("llama"), None, "feature", beta=0.5,
             calibration=CalibrationSpec(source="random", samples=4, seq_len=8),
             progress=False)
    assert len(hashed) == 1
    assert len(list((tmp_path / "statistics").iterdir())) == 1  # the statistics cache was keyed and written
