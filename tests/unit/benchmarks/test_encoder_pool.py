"""benchmarks/user_models.py: the unlabelled docstring pool and length-sorted embedding,
and benchmarks/encoder_recovery.py's pure parts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hamnet.core.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

_MODULE = '''"""Parse configuration files into typed settings for the application."""


class Loader:
    """Load every file of a folder in sorted order.
    Return the parsed settings objects to the caller."""

    def read(self):
        """Read one file and return its contents as a single string value."""
        return "too short"
'''


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "core.py").write_text(_MODULE)
    (root / "pkg" / "tests").mkdir()
    (root / "pkg" / "tests" / "test_core.py").write_text(
        '"""A test module docstring is never read here."""\n'
    )
    (root / "solo.py").write_text('"""A single module at the top level is read as well."""\n')
    (root / "broken.py").write_text("def (:\n")  # unparsable: skipped
    (root / "pkg-1.0.dist-info").mkdir()
    return root


def test_library_sentences_reads_docstrings_without_importing(tmp_path: Path) -> None:
    from user_models import library_sentences

    root = _site(tmp_path)
    every = library_sentences(5, roots=[root])
    assert sorted(every) == sorted([
        "Parse configuration files into typed settings for the application.",
        "Load every file of a folder in sorted order.",
        "Return the parsed settings objects to the caller.",
        "Read one file and return its contents as a single string value.",
        "A single module at the top level is read as well.",
    ])  # fmt: skip
    assert library_sentences(5, roots=[root]) == every  # a fixed draw
    kept = library_sentences(
        4, roots=[root], exclude=["Return the parsed settings objects to the caller."]
    )
    assert "Return the parsed settings objects to the caller." not in kept
    with pytest.raises(DataError, match=r"needs 6 distinct docstring sentences, but .* gave 5"):
        library_sentences(6, roots=[root])


def test_embed_sorts_and_trims_without_changing_the_embeddings() -> None:
    transformers = pytest.importorskip("transformers")
    from user_models import embed

    from hamnet.models.hf_modules import MeanPoolingEncoder

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    module = MeanPoolingEncoder(transformers.BertModel(config), normalize=True).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=10)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    x = {"input_ids": (rng.integers(1, 60, size=(10, 12)) * mask).astype(np.int64),
         "attention_mask": mask}  # fmt: skip
    with torch.inference_mode():
        full = module(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    np.testing.assert_allclose(embed(module, x, batch=3), full, atol=1e-5)


def test_recovery_configs_parse() -> None:
    from encoder_recovery import parse_configs

    assert parse_configs("ffn:0.1, heads+ffn:0.2,none:0") == [
        ("ffn", 0.1), ("heads+ffn", 0.2), ("none", 0.0)
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="ffn:R, heads\\+ffn:R or none:0"):
        parse_configs("heads:0.1")
