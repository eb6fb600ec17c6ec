"""Padding trimming of distill_module: exact for encoders that ignore padding, off otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.compress.distill.modules import _trim_padding, distill_module
from hamnet.core.errors import ConfigError


class MaskedMean(nn.Module):
    """Token embeddings averaged over the unmasked tokens (ignores padding)."""

    def __init__(self, vocab: int = 50, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.proj = nn.Linear(width, width)
        self.lengths: set[int] = set()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.lengths.add(int(input_ids.shape[1]))
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.proj(pooled)


class PaddingReader(MaskedMean):
    """Reads every position, padding included (trimming would change its outputs)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.lengths.add(int(input_ids.shape[1]))
        return self.proj(self.embed(input_ids).mean(1))


def _tokens(n: int = 48, length: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length // 2, size=n)  # every row padded: at most half used
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 50, size=(n, length)) * mask
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


def test_trim_padding_cuts_after_the_last_used_column() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]),
        "other": torch.ones(2, 3),
    }
    cut = _trim_padding(batch, "attention_mask")
    assert isinstance(cut, dict)
    assert cut["input_ids"].tolist() == [[5, 6], [7, 0]]
    assert cut["attention_mask"].shape == (2, 2)
    assert cut["other"].shape == (2, 3)  # another shape is left alone
    assert _trim_padding(batch, None) is batch


@pytest.mark.parametrize("model_class", [MaskedMean, PaddingReader])
def test_trimmed_distillation_equals_the_untrimmed_one_or_stays_off(model_class: type) -> None:
    torch.manual_seed(0)
    teacher = model_class().eval()
    x = _tokens()
    results, lengths = {}, {}
    for setting in ("auto", None):
        torch.manual_seed(1)
        student = model_class()
        student.load_state_dict({k: v + 0.05 for k, v in teacher.state_dict().items()})
        results[setting] = distill_module(
            teacher, student, x, objective="mse", hidden_map=None, epochs=2, lr=1e-2,
            batch_size=16, val_x=x, padding_mask=setting,
        )  # fmt: skip
        lengths[setting] = student.lengths
    trimmed, full = results["auto"], results[None]
    # Trimmed batches give the same losses (the batches group similar lengths, so
    # training takes other steps); a model that reads padding is not trimmed.
    assert trimmed.loss_before == pytest.approx(full.loss_before, rel=1e-5, abs=1e-7)
    assert trimmed.loss_after < trimmed.loss_before
    assert full.loss_after < full.loss_before
    if model_class is PaddingReader:
        assert trimmed.loss_after == pytest.approx(full.loss_after, rel=1e-5, abs=1e-7)
    assert lengths[None] == {12}
    if model_class is MaskedMean:
        assert min(lengths["auto"]) <= 6  # batches cut (the probe runs at full length)
    else:
        assert lengths["auto"] == {12}


def test_padding_mask_must_name_a_two_dimensional_input() -> None:
    teacher = MaskedMean()
    x = _tokens(8)
    with pytest.raises(ConfigError, match="padding_mask must name one of the named inputs"):
        distill_module(teacher, MaskedMean(), x, objective="mse", epochs=1, padding_mask="mask")
