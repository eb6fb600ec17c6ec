"""One hashing helper, and the ids and cache keys made with it are the ones made before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from hamnet.core.hashing import (
    CHUNK_BYTES,
    canonical_json,
    hash_bytes,
    hash_file,
    hash_json,
    hash_named_files,
    sha256,
    short_id,
    update_with_file,
)


def _old_file_digest(paths: list[Path], names: bool) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if names:
            digest.update(path.name.encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    big = tmp_path / "model.bin"
    big.write_bytes(bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 7))  # several chunks
    small = tmp_path / "model.xml"
    small.write_text("<net/>")
    return [small, big]


def test_bytes_text_and_json() -> None:
    assert hash_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_bytes("é") == hashlib.sha256("é".encode()).hexdigest()
    assert hash_bytes("abc", length=8) == hashlib.sha256(b"abc").hexdigest()[:8]
    obj = {"b": [1, 2.5, None], "a": {"y": "x", "c": True}}
    assert canonical_json(obj) == json.dumps(obj, sort_keys=True).encode()
    assert hash_json(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
    assert hash_json(obj) == hash_json({"a": {"c": True, "y": "x"}, "b": [1, 2.5, None]})
    assert hash_json(obj, length=16) == hash_json(obj)[:16]
    assert sha256("a", b"b").hexdigest() == hashlib.sha256(b"ab").hexdigest()
    with pytest.raises(TypeError):
        hash_json({"x": object()})


def test_files_in_chunks(files: list[Path]) -> None:
    assert hash_file(files[1]) == _old_file_digest([files[1]], names=False)
    assert hash_file(files[1], length=12) == _old_file_digest([files[1]], names=False)[:12]
    assert hash_named_files(files) == _old_file_digest(files, names=True)
    assert hash_named_files(files) != hash_named_files(files[::-1])
    digest = update_with_file(sha256("prefix"), files[0])
    assert digest.hexdigest() == hashlib.sha256(b"prefix<net/>").hexdigest()


def test_short_ids() -> None:
    full = hash_bytes("x")
    assert short_id(full) == full[:12] and short_id(full, 8) == full[:8]
    for bad in (0, 65):
        with pytest.raises(ValueError, match=r"length must be in \[1, 64\], but got"):
            short_id(full, bad)


def test_ids_and_cache_keys_are_unchanged(files: list[Path]) -> None:
    """Digests recorded from the hand-written hashers this helper replaced."""
    from hamnet.core.artifacts import hash_files
    from hamnet.core.candidate import Candidate
    from hamnet.serving.ab import stable_unit

    assert Candidate.make_id("p1", "quantize", "int8", "abc") == "3af2f38c568b"
    assert Candidate.make_id(None, "baseline", "export", "def") == "2da4ef8c87ac"
    assert stable_unit("req-42") == 0.988548329551806
    assert hash_files(files) == _old_file_digest(files, names=True)


def test_distillation_keys_are_unchanged() -> None:
    import torch

    from hamnet.compress.distill.teacher_cache import cache_key
    from hamnet.compress.distill.train import array_digest, model_digest

    key = cache_key(
        "t" * 64, "d" * 16, feature_layers=["b", "a"], attention_layers=["x"], need_embedding=True
    )
    assert key == "6a8d377c7edc8d22975c2f754404daad860a7e0e67e4ec19140891bc993985e8"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_digest(x) == "a8dabcedc2a4ea2e112f942c79b7691f839a06e1c431f5a08f78a80867932862"
    model = torch.nn.Linear(3, 2)
    old = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        old.update(name.encode())
        old.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    assert model_digest(model) == old.hexdigest()


def test_config_and_data_fingerprints_are_unchanged(tmp_path: Path) -> None:
    from hamnet.core.config import DataSection
    from hamnet.training.data import data_fingerprint

    np.savez(tmp_path / "data.npz", x=np.arange(12.0).reshape(4, 3), y=np.arange(4))
    section = DataSection(source="file", path=str(tmp_path / "data.npz"))
    old = hashlib.sha256(json.dumps(section.model_dump(mode="json"), sort_keys=True).encode())
    old.update((tmp_path / "data.npz").read_bytes())
    assert data_fingerprint(section) == old.hexdigest()[:16]


def test_config_fingerprint_is_unchanged() -> None:
    from conftest import tiny_config

    from hamnet.core.config import OptimizeConfig

    config = OptimizeConfig.model_validate(tiny_config())
    for sections in ((), ("data", "model")):
        data = config.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        old = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        assert config.fingerprint(*sections) == old
