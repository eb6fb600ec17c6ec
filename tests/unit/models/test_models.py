from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hamnet.core.config import HAMNetSection
from hamnet.core.errors import ConfigError, DataError, ModelLoadError
from hamnet.models import (
    CHECKPOINT_FORMAT,
    HAMNet,
    HAMNetConfig,
    count_flops,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from hamnet.models.hamnet import GaussianDropout, make_dropout

DROPOUT_TYPES = ["standard", "gaussian", "alpha"]


def _model(**overrides: object) -> HAMNet:
    torch.manual_seed(0)
    values: dict[str, object] = {"input_size": 64, "num_classes": 10, "token_size": 8}
    values.update(overrides)
    return HAMNet(HAMNetConfig.model_validate(values)).eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"token_size": None, "input_size": 12, "hidden_size": 16, "num_heads": 2},
        {"num_layers": 3, "num_heads": 2, "head_dim": 8, "activation": "relu"},
        {"hidden_size": 32, "ffn_ratio": 0.5, "activation": "silu", "token_size": 16},
        {"layer_heads": [1, 3], "layer_ffn": [5, 200]},
    ],
)
def test_forward_shape(overrides: dict[str, object]) -> None:
    model = _model(**overrides)
    cfg = model.config
    out = model(torch.randn(3, cfg.input_size))
    assert out.shape == (3, cfg.num_classes)
    assert torch.isfinite(out).all()
    for i, block in enumerate(model.blocks):
        assert block.attn.num_heads == cfg.heads_of(i)
        assert block.attn.q_proj.out_features == cfg.heads_of(i) * cfg.head_dim
        assert block.ffn.fc1.out_features == cfg.ffn_of(i)


def test_config_resolves_defaults() -> None:
    cfg = HAMNetConfig(input_size=64, num_classes=10)
    assert (cfg.token_size, cfg.num_tokens, cfg.head_dim) == (1, 64, 16)
    assert cfg.heads_of(1) == 4 and cfg.ffn_of(0) == 128
    again = HAMNetConfig.model_validate({**cfg.model_dump(), "num_heads": 2})
    assert again.head_dim == 16, "a saved head_dim survives a change of num_heads"
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        cfg.heads_of(2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_size": 63, "token_size": 8}, "input_size=63 and token_size=8"),
        ({"layer_heads": [1, 2, 3]}, "one entry per layer"),
        ({"layer_ffn": [0, 4]}, "at least 1"),
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size=30 and num_heads=4"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HAMNetConfig.model_validate({"input_size": 64, "num_classes": 10, **overrides})


def test_from_section() -> None:
    section = HAMNetSection(hidden_size=32, token_size=8, dropout_type="gaussian")
    cfg = HAMNetConfig.from_section(section, 64, 10)
    assert (cfg.input_size, cfg.num_classes, cfg.hidden_size, cfg.token_size) == (64, 10, 32, 8)
    assert cfg.dropout_type == "gaussian"
    with pytest.raises(DataError, match=r"model expects 32 features .* but the data has 64"):
        HAMNetConfig.from_section(HAMNetSection(input_size=32), 64, 10)
    with pytest.raises(ConfigError, match="input_size=60 and token_size=8"):
        HAMNetConfig.from_section(HAMNetSection(token_size=8), 60, 10)


def test_forward_rejects_wrong_width() -> None:
    with pytest.raises(DataError, match=r"shape \[batch, 64\], but got \[2, 65\]"):
        _model()(torch.zeros(2, 65))


@pytest.mark.parametrize("dropout_type", DROPOUT_TYPES)
def test_onnx_export_matches_torch(tmp_path: Path, dropout_type: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _model(layer_heads=[2, 3], layer_ffn=[7, 100], dropout_type=dropout_type)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 64),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Dropout", "RandomNormal", "RandomNormalLike"}, "eval dropout is gone"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 64)
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _model(layer_heads=[1, 4])
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt")
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.randn(5, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert list(path.parent.iterdir()) == [path], "no temporary file is left behind"


def test_load_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class _Payload:
    pass


def test_load_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "code.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "extra": _Payload()}, path)
    with pytest.raises(ModelLoadError, match=r"pickles Python code .*trust_checkpoint: true"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_plain_pickle(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelLoadError, match=r"not a file written by torch\.save"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_tensor_file(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelLoadError, match="holds a Tensor, but expected a hamnet checkpoint"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_foreign_dicts(tmp_path: Path) -> None:
    model = _model()
    state_only = tmp_path / "state.pt"
    torch.save(model.state_dict(), state_only)
    with pytest.raises(ModelLoadError, match=r"lacks \['format', 'config', 'state_dict'\]"):
        load_checkpoint(state_only)

    payload = {"format": CHECKPOINT_FORMAT, "config": model.config.model_dump()}
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**payload, "state_dict": _model(hidden_size=32).state_dict()}, mismatched)
    with pytest.raises(ModelLoadError, match="weights do not match its config"):
        load_checkpoint(mismatched)

    future = tmp_path / "future.pt"
    torch.save({**payload, "format": "hamnet-checkpoint/9", "state_dict": {}}, future)
    with pytest.raises(ModelLoadError, match="hamnet-checkpoint/9"):
        load_checkpoint(future)


def test_counts() -> None:
    model = _model(hidden_size=16, num_heads=2, num_layers=1, token_size=16, ffn_ratio=1.0)
    # embed 16*16+16, pos 4*16, q/k/v/out 4*(16*16+16), 3 norms 3*32, ffn 2*(16*16+16), head
    expected = 272 + 64 + 4 * 272 + 3 * 32 + 2 * 272 + 16 * 10 + 10
    assert count_parameters(model) == expected
    tokens, hidden = 4, 16
    linear_macs = tokens * (16 * hidden + 6 * hidden * hidden) + hidden * 10
    attention_macs = 2 * tokens * tokens * hidden
    assert count_flops(model, 64) == 2 * (linear_macs + attention_macs)
    assert not model.training


@pytest.mark.parametrize("dropout_type", DROPOUT_TYPES)
def test_dropout_types_vary_in_training_only(dropout_type: Any) -> None:
    model = _model(dropout_rate=0.3, dropout_type=dropout_type)
    standard = _model(dropout_rate=0.3)
    assert list(model.state_dict()) == list(standard.state_dict()), "no new parameter names"
    kind = type(make_dropout(dropout_type, 0.3))
    sites = [m for m in model.modules() if type(m) is kind]
    assert len(sites) == 1 + 3 * model.config.num_layers, "embedding + 3 sites per block"
    x = torch.randn(4, 64)
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model(x), model(x)), "training mode is stochastic"
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), standard(x), rtol=0, atol=0)


def test_make_dropout() -> None:
    assert type(make_dropout("standard", 0.1)) is nn.Dropout
    assert type(make_dropout("alpha", 0.1)) is nn.AlphaDropout
    gaussian = make_dropout("gaussian", 0.2)
    assert isinstance(gaussian, GaussianDropout)
    torch.manual_seed(0)
    noise = gaussian(torch.ones(200_000))
    assert abs(float(noise.mean()) - 1.0) < 0.01
    assert abs(float(noise.var()) - 0.2 / 0.8) < 0.01, "variance p / (1 - p)"
    gaussian.eval()
    x = torch.randn(5)
    assert gaussian(x) is x
    with pytest.raises(ValueError, match="dropout_type must be"):
        make_dropout("spatial", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), but got 1.0"):
        GaussianDropout(1.0)
    with pytest.raises(ValidationError, match="dropout_type"):
        HAMNetSection(dropout_type="spatial")  # type: ignore[arg-type]


def test_checkpoint_without_dropout_type_loads(tmp_path: Path) -> None:
    model = _model()
    config = model.config.model_dump()
    del config["dropout_type"]
    path = tmp_path / "old.pt"
    payload = {"format": CHECKPOINT_FORMAT, "config": config, "state_dict": model.state_dict()}
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert loaded.config.dropout_type == "standard"
    x = torch.randn(3, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path) -> None:
    model = _model(num_layers=3, dropout_rate=0.0).train()
    assert model.gradient_checkpointing is False
    x, y = torch.randn(6, 64), torch.randint(0, 10, (6,))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing = True
    checkpointed = gradients()
    assert set(plain) == {n for n, _ in model.named_parameters()}
    torch.testing.assert_close(checkpointed, plain)
    path = save_checkpoint(model, tmp_path / "model.pt")
    assert load_checkpoint(path).gradient_checkpointing is False, "a runtime switch only"


def _attention_by_hand(model: HAMNet, x: torch.Tensor) -> torch.Tensor:
    """The general token path written out (softmax over the tokens), for any token count."""
    h = model.embed(x.reshape(len(x), model.config.num_tokens, -1)) + model.pos
    for block in model.blocks:
        a, attn = block.norm1(h), block.attn
        q, k, v = (attn._split(p(a)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        weights = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)
        h = h + attn.out_proj((weights @ v).transpose(1, 2).flatten(2))
        h = h + block.ffn(block.norm2(h))
    out: torch.Tensor = model.head(model.norm(h).mean(dim=1))
    return out


def test_one_token_model_is_the_general_path_without_query_and_key() -> None:
    """With one token the softmax is 1: the shortcut gives the general path's outputs
    and gradients, and the query/key projections are never run."""
    model = _model(token_size=64, hidden_size=16, num_heads=2, num_layers=2, dropout_rate=0.0)
    assert model.config.num_tokens == 1 and model.one_token_fast_path
    x = torch.randn(5, 64)
    torch.testing.assert_close(model(x), _attention_by_hand(model, x))
    model.one_token_fast_path = False
    torch.testing.assert_close(model(x), _attention_by_hand(model, x))
    model.one_token_fast_path = True
    model.train()
    model(x).sum().backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == {f"blocks.{i}.attn.{p}_proj.{w}" for i in (0, 1) for p in "qk" for w in
                      ("weight", "bias")}  # fmt: skip
    # Dropout on the (all-ones) attention weights still acts in training, per head.
    drop = _model(token_size=64, hidden_size=16, num_heads=2, dropout_rate=0.5).train()
    torch.manual_seed(1)
    assert not torch.equal(drop(x), drop(x))
    assert torch.equal(drop.eval()(x), drop(x))


def test_one_token_onnx_export_is_a_chain_of_gemms(tmp_path: Path) -> None:
    """No token axis in the graph (no Reshape, no ReduceMean), value and output
    projections folded into one matrix, same outputs as eager PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from hamnet.backends.export import export_onnx

    model = _model(token_size=64, hidden_size=16, num_heads=2, num_layers=2)
    path = export_onnx(model, 64, tmp_path / "one.onnx")
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert not {"Reshape", "ReduceMean", "Softmax", "MatMul"} & set(ops)
    # embed + one folded attention matrix and fc1 + fc2 per block + head
    assert ops.count("Gemm") == 1 + 3 * 2 + 1
    assert all(m.folded_value_path is None for m in model.modules() if hasattr(m, "q_proj"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 6):
        x = torch.randn(batch, 64)
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
