"""Hugging Face wrappers: mean pooling, logits, ONNX export, tokenization from a local dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hamnet.core.errors import DataError, ModelLoadError
from hamnet.models.hf_modules import MeanPoolingEncoder, SequenceClassifier, tokenize

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "tiny", "model", "a"]


def _config(**extra: object) -> object:
    return transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
        **extra,
    )


def save_tiny_bert(directory: Path, *, classifier: bool = False, normalize: bool = False) -> Path:
    """A random tiny BERT (and its tokenizer) saved with save_pretrained."""
    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    if classifier:
        model = transformers.BertForSequenceClassification(_config(num_labels=3))
    else:
        model = transformers.BertModel(_config())
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    if normalize:
        st = "sentence_transformers.models."
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"},
        ]
        (directory / "modules.json").write_text(json.dumps(modules))
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True})
        )
        (directory / "2_Normalize").mkdir()
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_tokenize_gives_int64_arrays_of_fixed_length(bert_dir: Path) -> None:
    tokens = tokenize(bert_dir, ["hello world", "a tiny model"], max_length=8)
    assert set(tokens) == {"input_ids", "attention_mask", "token_type_ids"}
    for array in tokens.values():
        assert array.dtype == np.int64
        assert array.shape == (2, 8)
    assert tokens["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # CLS hello world SEP
    longest = tokenize(bert_dir, ["hello", "a tiny model"], max_length=8, padding="longest")
    assert longest["input_ids"].shape == (2, 5)


def test_tokenize_errors_name_what_was_expected(bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="non-empty sequence of strings, but got str"):
        tokenize(bert_dir, "hello")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="padding must be"):
        tokenize(bert_dir, ["hello"], padding="do_not_pad")
    with pytest.raises(ModelLoadError, match="must hold a Hugging Face tokenizer"):
        tokenize(tmp_path, ["hello"])


def test_mean_pooling_ignores_masked_tokens(bert_dir: Path) -> None:
    model = transformers.BertModel.from_pretrained(bert_dir, attn_implementation="eager").eval()
    encoder = MeanPoolingEncoder(model).eval()
    ids = torch.tensor([[2, 5, 6, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        pooled = encoder(ids, mask)
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert pooled.shape == (1, 16)
    torch.testing.assert_close(pooled, states[:, :4].mean(dim=1))
    normalized = MeanPoolingEncoder(model, normalize=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(normalized(ids, mask).norm(dim=1), torch.ones(1))


def test_sequence_classifier_returns_logits(tmp_path: Path) -> None:
    directory = save_tiny_bert(tmp_path / "clf", classifier=True)
    model = transformers.BertForSequenceClassification.from_pretrained(directory).eval()
    tokens = tokenize(directory, ["hello world", "tiny"], max_length=8)
    inputs = {k: torch.from_numpy(v) for k, v in tokens.items()}
    with torch.no_grad():
        logits = SequenceClassifier(model)(**inputs)
        expected = model(**inputs).logits
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("wrapper", ["embedding", "classification"])
def test_wrappers_export_to_onnx_and_match(tmp_path: Path, wrapper: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    directory = save_tiny_bert(tmp_path / wrapper, classifier=wrapper == "classification")
    if wrapper == "classification":
        hf = transformers.BertForSequenceClassification.from_pretrained(
            directory, attn_implementation="eager"
        )
        module: torch.nn.Module = SequenceClassifier(hf.eval())
    else:
        hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager")
        module = MeanPoolingEncoder(hf.eval(), normalize=True)
    module.eval()
    tokens = tokenize(directory, ["hello world", "a tiny model"], max_length=8)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(torch.from_numpy(tokens[n]) for n in names)
    out = tmp_path / f"{wrapper}.onnx"
    torch.onnx.export(
        module,
        args,
        str(out),
        input_names=names,
        output_names=["output"],
        dynamic_axes={n: {0: "batch"} for n in names},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, tokens)
    with torch.no_grad():
        expected = module(*args).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
