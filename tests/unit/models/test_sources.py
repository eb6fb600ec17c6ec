"""Model sources (pickle, torchvision/timm, Hugging Face, ONNX) and the module artifact."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hamnet.core.errors import ConfigError, MissingDependencyError, ModelLoadError
from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
from hamnet.models.sources import (
    MODULE_FILE,
    PLAN_FILE,
    ROOT_PICKLE,
    WEIGHTS_FILE,
    InputSpec,
    ModuleSource,
    TensorSpec,
    example_inputs,
    hf_input_spec,
    hf_task,
    is_hamnet_checkpoint,
    load_module_artifact,
    load_source,
    module_artifact_files,
    onnx_input_spec,
    parse_model_ref,
    read_module_artifact,
    save_module_artifact,
)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def _onnx2torch_ready() -> bool:
    try:
        from hamnet.models.sources import _import_onnx2torch

        _import_onnx2torch()
    except Exception:
        return False
    return True


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


IMAGE = InputSpec(TensorSpec(shape=[1, 3, 8, 8]))


def export_onnx(module: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        module,
        (torch.randn(1, 3, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


# --------------------------------------------------------------------------- sources


def test_source_fields_are_checked_per_kind() -> None:
    with pytest.raises(ValidationError, match="needs path"):
        ModuleSource(kind="onnx")
    with pytest.raises(ValidationError, match="needs name"):
        ModuleSource(kind="torchvision")
    with pytest.raises(ValidationError, match="weights, not path"):
        ModuleSource(kind="timm", name="resnet18", path="w.pt")
    with pytest.raises(ValidationError, match="task applies to 'huggingface'"):
        ModuleSource(kind="onnx", path="m.onnx", task="embedding")
    source = ModuleSource(kind="torchvision", name="resnet18", kwargs={"num_classes": 10})
    assert ModuleSource.model_validate_json(source.model_dump_json()) == source


def test_pickle_needs_trust_and_loads_with_it(tmp_path: Path) -> None:
    model = small_cnn()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    source = ModuleSource(kind="pickle", path=str(path))
    with pytest.raises(ModelLoadError, match="trust_checkpoint=True") as err:
        load_source(source)
    assert "--trust-checkpoint" in str(err.value)
    assert "torch.nn.modules" in str(err.value)  # names what the file pickles
    loaded = load_source(source, trust_checkpoint=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_pickle_of_a_state_dict_says_it_needs_an_architecture(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(small_cnn().state_dict(), path)
    with pytest.raises(ModelLoadError, match="holds weights only"):
        load_source(ModuleSource(kind="pickle", path=str(path)))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_source(ModuleSource(kind="pickle", path=str(tmp_path / "none.pt")))


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_architecture_package_is_named(
    package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # the import fails cleanly
    with pytest.raises(MissingDependencyError, match=f"needs the {package} package"):
        load_source(ModuleSource(kind=package, name="resnet18"))  # type: ignore[arg-type]


def test_broken_architecture_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that is installed but fails to import (a CUDA build beside a CPU torch)."""
    from hamnet.models import sources

    monkeypatch.setitem(sys.modules, "timm", None)  # importing it raises ImportError
    monkeypatch.setattr(sources, "_module_found", lambda name: True)  # ... though installed
    with pytest.raises(
        MissingDependencyError, match="installed but does not import: ModuleNotFoundError"
    ):
        load_source(ModuleSource(kind="timm", name="resnet18"))


@pytest.mark.skipif(not _importable("torchvision"), reason="torchvision does not import here")
def test_torchvision_source_loads_a_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=5).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    source = parse_model_ref("torchvision:resnet18", weights=tmp_path / "w.pt", num_classes=5)
    loaded = load_source(source)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        load_source(ModuleSource(kind="torchvision", name="resnet81"))
    with pytest.raises(ModelLoadError, match=r"must fit the module|must match"):
        load_source(
            ModuleSource(kind="torchvision", name="resnet34", weights=str(tmp_path / "w.pt"))
        )


@pytest.mark.skipif(not _importable("timm"), reason="timm does not import here")
def test_timm_source_loads_a_state_dict(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_source(
        parse_model_ref("timm:resnet18", weights=tmp_path / "w.pth", num_classes=3)
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ConfigError, match="did you mean"):
        load_source(ModuleSource(kind="timm", name="resnet18x"))


# ---------------------------------------------------------------------- Hugging Face

transformers_missing = importlib.util.find_spec("transformers") is None


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if transformers_missing:
        pytest.skip("transformers is not installed")
    from tests.unit.models.test_hf_modules import save_tiny_bert

    root = tmp_path_factory.mktemp("hf")
    return {
        "encoder": save_tiny_bert(root / "encoder"),
        "sentence": save_tiny_bert(root / "sentence", normalize=True),
        "classifier": save_tiny_bert(root / "classifier", classifier=True),
    }


def _tokens(directory: Path) -> dict[str, torch.Tensor]:
    from hamnet.models.hf_modules import tokenize

    arrays = tokenize(directory, ["hello world", "a tiny model", "hello"], max_length=8)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def test_huggingface_embedding_and_normalize(bert_dirs: dict[str, Path]) -> None:
    plain = load_source(ModuleSource(kind="huggingface", path=str(bert_dirs["encoder"])))
    tokens = _tokens(bert_dirs["encoder"])
    with torch.no_grad():
        out = plain(**tokens)
    assert out.shape == (3, 16)
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))
    assert plain.model.config._attn_implementation == "eager"
    sentence = load_source(
        ModuleSource(kind="huggingface", path=str(bert_dirs["sentence"]), task="embedding")
    )
    with torch.no_grad():
        torch.testing.assert_close(sentence(**tokens).norm(dim=1), torch.ones(3))


def test_huggingface_classification_and_auto_task(bert_dirs: dict[str, Path]) -> None:
    assert hf_task(bert_dirs["classifier"]) == "classification"
    assert hf_task(bert_dirs["encoder"]) == "embedding"
    model = load_source(ModuleSource(kind="huggingface", path=str(bert_dirs["classifier"])))
    with torch.no_grad():
        logits = model(**_tokens(bert_dirs["classifier"]))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (3, 3)
    with pytest.raises(ModelLoadError, match="needs a trained classification head"):
        load_source(
            ModuleSource(kind="huggingface", path=str(bert_dirs["encoder"]), task="classification")
        )


def test_huggingface_remote_code_is_refused(bert_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(bert_dirs["encoder"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(
        json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.XModel"}})
    )
    with pytest.raises(ModelLoadError, match=r"needs remote code .*which hamnet never runs"):
        load_source(ModuleSource(kind="huggingface", path=str(remote)))
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "my-own-bert"}))
    with pytest.raises(ModelLoadError, match=r"'my-own-bert'.*needs remote code"):
        load_source(ModuleSource(kind="huggingface", path=str(remote)))


def test_huggingface_input_spec(bert_dirs: dict[str, Path]) -> None:
    spec = hf_input_spec(bert_dirs["encoder"], max_length=8)
    assert spec.names == ("input_ids", "attention_mask", "token_type_ids")
    inputs = example_inputs(spec, batch=2)
    assert isinstance(inputs, dict)
    assert inputs["attention_mask"].tolist() == [[1] * 8] * 2
    assert inputs["input_ids"].dtype == torch.int64
    model = load_source(ModuleSource(kind="huggingface", path=str(bert_dirs["encoder"])))
    with torch.no_grad():
        assert model(**inputs).shape == (2, 16)


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.skipif(not _onnx2torch_ready(), reason="onnx2torch does not import here")
def test_onnx_round_trip_matches(tmp_path: Path) -> None:
    model = small_cnn()
    path = export_onnx(model, tmp_path / "cnn.onnx")
    converted = load_source(parse_model_ref(str(path)))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)
    assert "torchvision" not in sys.modules or sys.modules["torchvision"] is not None
    assert onnx_input_spec(path) == IMAGE


@pytest.mark.skipif(not _onnx2torch_ready(), reason="onnx2torch does not import here")
def test_onnx_unsupported_operator_is_named(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Det", ["r"], ["y"]),
            helper.make_node("FusedMatMul", ["x", "x"], ["z"], domain="com.microsoft"),
        ],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, tmp_path / "det.onnx")
    with pytest.raises(ModelLoadError) as err:
        load_source(ModuleSource(kind="onnx", path=str(tmp_path / "det.onnx")))
    message = str(err.value)
    assert "Det (opset 17)" in message
    assert "com.microsoft::FusedMatMul (opset 1)" in message
    assert "Relu" not in message
    assert "can still be quantized" in message and "not pruned or distilled" in message


def test_onnx2torch_missing_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    for name in [m for m in sys.modules if m == "onnx2torch" or m.startswith("onnx2torch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(MissingDependencyError, match=r"needs onnx2torch.*can still be quantized"):
        load_source(ModuleSource(kind="onnx", path=str(path)))


# ----------------------------------------------------------------------- model refs


def test_parse_model_ref_forms(tmp_path: Path, bert_dirs: dict[str, Path]) -> None:
    tv = parse_model_ref("torchvision:resnet18", weights="w.pt", num_classes=10)
    assert (tv.kind, tv.name, tv.kwargs, tv.weights) == (
        "torchvision",
        "resnet18",
        {"num_classes": 10},
        "w.pt",
    )
    assert parse_model_ref("timm:efficientnet_b0").kind == "timm"
    hf = parse_model_ref(str(bert_dirs["sentence"]), task="embedding")
    assert (hf.kind, hf.task) == ("huggingface", "embedding")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    assert parse_model_ref(str(onnx_file)).kind == "onnx"
    torch.save(small_cnn(), tmp_path / "whole.pth")
    assert parse_model_ref(str(tmp_path / "whole.pth")) == ModuleSource(
        kind="pickle", path=str(tmp_path / "whole.pth")
    )


def test_parse_model_ref_errors(tmp_path: Path) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match=r"needs an architecture.*torchvision:NAME --weights"):
        parse_model_ref(str(tmp_path / "sd.pt"))
    with pytest.raises(ModelLoadError, match="no such file"):
        parse_model_ref(str(tmp_path / "missing.onnx"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="must be 'torchvision:NAME'"):
        parse_model_ref(str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="weights applies to"):
        parse_model_ref(str(tmp_path / "sd.pt"), weights="w.pt")
    with pytest.raises(ConfigError, match="task applies to Hugging Face"):
        parse_model_ref("timm:resnet18", task="embedding")
    with pytest.raises(ModelLoadError, match=r"must hold config.json"):
        parse_model_ref(str(tmp_path))


def test_hamnet_checkpoints_are_not_module_sources(tmp_path: Path) -> None:
    model = HAMNet(HAMNetConfig(input_size=8, num_classes=2, hidden_size=8, num_heads=2))
    path = save_checkpoint(model, tmp_path / "hamnet.pt")
    assert is_hamnet_checkpoint(path)
    torch.save(small_cnn(), tmp_path / "whole.pt")
    assert not is_hamnet_checkpoint(tmp_path / "whole.pt")
    assert not is_hamnet_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="is a hamnet checkpoint"):
        parse_model_ref(str(path))


# ----------------------------------------------------------------------- input specs


def test_input_spec_json_and_examples() -> None:
    named = InputSpec.model_validate_json(
        '{"input_ids": {"shape": [1, 6], "dtype": "int64"},'
        ' "attention_mask": {"shape": [1, 6], "dtype": "int64"}}'
    )
    assert named.names == ("input_ids", "attention_mask")
    built = example_inputs(named, batch=3)
    assert isinstance(built, dict)
    assert built["input_ids"].tolist() == [[0] * 6] * 3
    assert built["attention_mask"].tolist() == [[1] * 6] * 3
    one = example_inputs(IMAGE, batch=2)
    assert isinstance(one, torch.Tensor) and one.shape == (2, 3, 8, 8)
    assert one.dtype == torch.float32
    torch.testing.assert_close(one, example_inputs(IMAGE, batch=2))  # seeded
    assert InputSpec.model_validate_json(IMAGE.model_dump_json()) == IMAGE
    with pytest.raises(ValidationError, match="positive sizes"):
        TensorSpec(shape=[1, 0])
    with pytest.raises(ValidationError, match="share their batch size"):
        InputSpec({"a": TensorSpec(shape=[1, 2]), "b": TensorSpec(shape=[2, 2])})


def test_input_spec_of_examples() -> None:
    from hamnet.backends.session import pack_inputs

    assert InputSpec.of(torch.zeros(1, 3, 8, 8)) == IMAGE
    packed = pack_inputs(
        {"input_ids": np.zeros((4, 6), np.int64), "attention_mask": np.ones((4, 6), np.int64)}
    )
    spec = InputSpec.of(packed)
    assert spec.names == ("input_ids", "attention_mask")
    assert isinstance(spec.root, dict) and spec.root["input_ids"] == TensorSpec(
        shape=[4, 6], dtype="int64"
    )
    assert InputSpec.of({"x": torch.zeros(2, 5, dtype=torch.bool)}).root == {
        "x": TensorSpec(shape=[2, 5], dtype="bool")
    }
    with pytest.raises(ConfigError, match="must be a tensor or array"):
        InputSpec.of([1, 2, 3])


# ------------------------------------------------------------------ module artifact


def test_artifact_of_an_in_memory_module(tmp_path: Path) -> None:
    model = small_cnn()
    main = save_module_artifact(
        tmp_path / "a", inputs=IMAGE, module=model, output_kind="class_scores"
    )
    assert main == tmp_path / "a" / MODULE_FILE
    artifact = read_module_artifact(main)
    assert artifact.source == ModuleSource(kind="pickle", path=ROOT_PICKLE)
    assert (artifact.output_kind, artifact.plan, artifact.weights) == ("class_scores", None, None)
    assert module_artifact_files(main) == [main, tmp_path / "a" / ROOT_PICKLE]
    with pytest.raises(ModelLoadError, match="trust_checkpoint=True"):
        load_module_artifact(main)
    loaded = load_module_artifact(tmp_path / "a", trust_checkpoint=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ConfigError, match="needs source"):
        save_module_artifact(tmp_path / "b", inputs=IMAGE, module=model, plan=tmp_path / "p.json")


def test_artifact_weights_override_the_source(tmp_path: Path) -> None:
    """A fine-tuned copy of a pickled root: the root is copied in, weights in safetensors."""
    root = small_cnn()
    torch.save(root, tmp_path / "user.pt")
    tuned = small_cnn()
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1)
    source = parse_model_ref(str(tmp_path / "user.pt"))
    main = save_module_artifact(tmp_path / "art", source=source, inputs=IMAGE, module=tuned)
    files = module_artifact_files(main)
    assert [f.name for f in files] == [MODULE_FILE, WEIGHTS_FILE, ROOT_PICKLE]
    assert all(f.is_file() for f in files)
    loaded = load_module_artifact(main, trust_checkpoint=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tuned(x))
        assert not torch.allclose(loaded(x), root(x))


def test_artifact_rejects_weights_of_another_architecture(tmp_path: Path) -> None:
    torch.save(small_cnn(), tmp_path / "user.pt")
    other = nn.Sequential(nn.Linear(4, 4))
    main = save_module_artifact(
        tmp_path / "art",
        source=ModuleSource(kind="pickle", path=str(tmp_path / "user.pt")),
        inputs=IMAGE,
        module=other,
    )
    with pytest.raises(ModelLoadError, match="must match the module rebuilt from pickle"):
        load_module_artifact(main, trust_checkpoint=True)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ModelLoadError, match="must be a module artifact"):
        read_module_artifact(tmp_path / "bad.json")


def test_artifact_of_a_huggingface_source(bert_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = parse_model_ref(str(bert_dirs["sentence"]))
    user = load_source(source)
    with torch.no_grad():  # "fine-tuned": every weight moved, tied ones too
        for p in user.parameters():
            p.mul_(1.01)
    spec = hf_input_spec(bert_dirs["sentence"], max_length=8)
    main = save_module_artifact(tmp_path / "hf", source=source, inputs=spec, module=user)
    artifact = read_module_artifact(main)
    assert artifact.output_kind == "embedding"
    assert Path(str(artifact.source.path)).is_absolute()
    loaded = load_module_artifact(main)
    tokens = _tokens(bert_dirs["sentence"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tokens), user(**tokens))
    classifier = parse_model_ref(str(bert_dirs["classifier"]))
    main = save_module_artifact(tmp_path / "clf", source=classifier, inputs=spec)
    assert read_module_artifact(main).output_kind == "class_scores"


@pytest.mark.skipif(not _onnx2torch_ready(), reason="onnx2torch does not import here")
def test_artifact_of_an_onnx_source(tmp_path: Path) -> None:
    path = export_onnx(small_cnn(), tmp_path / "cnn.onnx")
    source = parse_model_ref(str(path))
    converted = load_source(source)
    with torch.no_grad():
        for p in converted.parameters():
            p.mul_(0.5)
    main = save_module_artifact(
        tmp_path / "art", source=source, inputs=onnx_input_spec(path), module=converted
    )
    loaded = load_module_artifact(main)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), converted(x))


@pytest.mark.skipif(
    not (_importable("hamnet.models.replay") and _importable("hamnet.compress.pruning.modules")),
    reason="hamnet.models.replay / prune_module are not merged yet",
)
def test_artifact_with_a_pruning_plan(tmp_path: Path) -> None:
    from hamnet.compress.pruning.modules import prune_module

    root = small_cnn()
    torch.save(root, tmp_path / "user.pt")
    result = prune_module(root, example_inputs(IMAGE), ratio=0.5)
    source = ModuleSource(kind="pickle", path=str(tmp_path / "user.pt"))
    main = save_module_artifact(
        tmp_path / "art", source=source, inputs=IMAGE, module=result.model, plan=result.plan
    )
    assert [f.name for f in module_artifact_files(main)] == [
        MODULE_FILE,
        PLAN_FILE,
        WEIGHTS_FILE,
        ROOT_PICKLE,
    ]
    loaded = load_module_artifact(main, trust_checkpoint=True)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in root.parameters())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
