"""Exported token models skip padded positions inside the graph, only when that is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from torch import nn

from hamnet.backends.export import export_module, trimmed_by
from hamnet.backends.padding import resolve_mask
from hamnet.core.errors import DataError, ExportError
from hamnet.evaluate.measure import latency_ms, latency_rows

SEQ = 12


class MeanPooled(nn.Module):
    """A sentence embedding: mean of the unpadded tokens' hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_bert(layers=2, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class PerToken(MeanPooled):
    """Hidden states per token: the output has the token axis."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


class ReadsPadding(nn.Module):
    """Ignores the mask: padded positions change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids).mean(1) + 0 * attention_mask.sum()


def _tokens(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (len(lengths), SEQ), generator=generator)
    mask = torch.zeros(len(lengths), SEQ, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


def _ort(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])


def test_a_pooled_encoder_skips_padding_and_matches_the_module(tmp_path: Path) -> None:
    model = MeanPooled().eval()
    path = export_module(model, _tokens([5]), tmp_path / "m.onnx", trim_padding="auto")
    assert trimmed_by(path) == "attention_mask"
    plain = export_module(model, _tokens([5]), tmp_path / "plain.onnx")
    assert trimmed_by(plain) is None
    for lengths in ([3], [12], [2, 7, 4], [1, 1]):
        batch = _tokens(lengths, seed=len(lengths))
        with torch.no_grad():
            expected = model(**batch).numpy()
        np.testing.assert_allclose(_ort(path, batch), expected, atol=1e-5)
    # The cut is inside the graph: a Range over the used length feeds a Gather.
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Range", "Gather", "ReduceMax"} <= ops


def test_auto_leaves_models_alone_where_trimming_is_not_exact(tmp_path: Path) -> None:
    for model in (PerToken().eval(), ReadsPadding().eval()):
        path = export_module(model, _tokens([5, 9]), tmp_path / "m.onnx", trim_padding="auto")
        assert trimmed_by(path) is None
    linear = nn.Linear(4, 2).eval()
    path = export_module(linear, torch.ones(1, 4), tmp_path / "l.onnx", trim_padding="auto")
    assert trimmed_by(path) is None


def test_a_named_mask_that_cannot_be_trimmed_by_is_one_clear_error(tmp_path: Path) -> None:
    mask = "attention_mask"
    with pytest.raises(ExportError, match=r"must not have a token axis.*\[1, 12, 32\]"):
        export_module(PerToken().eval(), _tokens([5]), tmp_path / "a.onnx", trim_padding=mask)
    with pytest.raises(ExportError, match=r"moves its outputs by .* reads padded tokens"):
        export_module(ReadsPadding().eval(), _tokens([5]), tmp_path / "b.onnx", trim_padding=mask)
    expected = r"one of the inputs \['input_ids', 'attention_mask'\], but got 'mask'"
    with pytest.raises(ExportError, match=expected):
        resolve_mask("mask", ["input_ids", "attention_mask"], [(1, 4), (1, 4)])
    with pytest.raises(ExportError, match=r"\[batch, tokens\] input, but got shape \[1, 4, 2\]"):
        resolve_mask("attention_mask", ["attention_mask"], [(1, 4, 2)])
    assert resolve_mask("auto", ["input"], [(1, 4)]) is None
    assert resolve_mask(None, ["attention_mask"], [(1, 4)]) is None


class Recorder:
    """A session that records the rows it is called with."""

    runtime = "torch"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def run(self, x: Any) -> np.ndarray:
        self.seen.append(int(np.asarray(x)[0, 0]))
        return np.zeros((len(x), 1), np.float32)


def test_latency_cycles_through_distinct_batches() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    rows = latency_rows(x, batch_size=2, batches=3)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    session = Recorder()
    latency_ms(session, rows, warmup=1, repeats=5, batch_size=2)  # type: ignore[arg-type]
    assert session.seen == [0, 0, 2, 4, 0, 2]
    one = Recorder()
    latency_ms(one, x[:1], warmup=0, repeats=2)  # type: ignore[arg-type]
    assert one.seen == [0, 0]
    assert latency_rows(x[:3], batch_size=4).shape == (4, 1)  # repeats rows when short
    with pytest.raises(DataError, match=r"between 1 and the 6 rows given, but got 7"):
        latency_ms(session, rows, warmup=0, repeats=1, batch_size=7)  # type: ignore[arg-type]
