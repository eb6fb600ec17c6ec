"""TensorFlow ingestion: the input signature follows the Keras model (any rank, several inputs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hamnet.api.ingestion import TensorSignature, ingest_tensorflow, tensorflow_signature
from hamnet.core.errors import ConfigError, MissingDependencyError

TF_INSTALLED = (
    importlib.util.find_spec("tensorflow") is not None
    and importlib.util.find_spec("tf2onnx") is not None
)


def test_one_input_of_any_rank_keeps_the_models_shape() -> None:
    assert tensorflow_signature((None, 28, 28, 1)) == [TensorSignature("input", (None, 28, 28, 1))]
    assert tensorflow_signature((None, 64), names=["dense_input:0"], dtypes=["float32"]) == [
        TensorSignature("dense_input", (None, 64), "float32")
    ]
    # a fixed batch size becomes dynamic; open sizes after it stay open
    assert tensorflow_signature([1, None, 8]) == [TensorSignature("input", (None, None, 8))]


def test_several_inputs_by_name_and_dtype() -> None:
    signature = tensorflow_signature(
        [(None, 16), (None, 16), (None, 4, 4, 3)],
        names=["input_ids", "attention_mask", "image"],
        dtypes=["int32", "int32", "float32"],
    )
    assert signature == [
        TensorSignature("input_ids", (None, 16), "int32"),
        TensorSignature("attention_mask", (None, 16), "int32"),
        TensorSignature("image", (None, 4, 4, 3), "float32"),
    ]
    from_mapping = tensorflow_signature({"a": (None, 3), "b": (None, 2, 2)})
    assert [(s.name, s.shape) for s in from_mapping] == [("a", (None, 3)), ("b", (None, 2, 2))]
    unnamed = tensorflow_signature([(None, 3), (None, 5)])
    assert [s.name for s in unnamed] == ["input_0", "input_1"]


def test_input_shape_overrides_the_non_batch_sizes() -> None:
    assert tensorflow_signature((None, None, None, 3), input_shape=[8, 32, 32, 3]) == [
        TensorSignature("input", (None, 32, 32, 3))
    ]
    assert tensorflow_signature((None, 10), input_shape=[1, 10]) == [
        TensorSignature("input", (None, 10))
    ]


def test_input_shape_errors_name_the_model_and_the_given_shape() -> None:
    with pytest.raises(ConfigError, match=r"model's rank 4 .*\[None, 28, 28, 1\].*\[1, 784\]"):
        tensorflow_signature((None, 28, 28, 1), input_shape=[1, 784])
    with pytest.raises(
        ConfigError, match=r"agree with the sizes the model fixes.*\[1, 32, 32, 1\]"
    ):
        tensorflow_signature((None, 28, 28, 1), input_shape=[1, 32, 32, 1])
    with pytest.raises(ConfigError, match="applies to a model with one input, but the model has 2"):
        tensorflow_signature([(None, 3), (None, 3)], input_shape=[1, 3])
    with pytest.raises(ConfigError, match="input_shape must hold positive integers"):
        tensorflow_signature((None, 3), input_shape=[1, 0])
    with pytest.raises(ConfigError, match="must be a shape such as"):
        tensorflow_signature("not a shape")
    with pytest.raises(ConfigError, match=r"names must list one entry per model input \(2\)"):
        tensorflow_signature([(None, 3), (None, 3)], names=["only_one"])


@pytest.mark.skipif(TF_INSTALLED, reason="tensorflow and tf2onnx are installed")
def test_missing_tensorflow_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError) as err:
        ingest_tensorflow(tmp_path / "model.keras", tmp_path, None)
    message = str(err.value)
    assert "from_tensorflow needs tensorflow and tf2onnx" in message
    assert "pip install 'hamnet[tensorflow]'" in message
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    assert f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed" in (
        message
    )


@pytest.mark.skipif(not TF_INSTALLED, reason="tensorflow and tf2onnx are not installed")
def test_a_keras_image_model_converts_with_its_own_rank(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    inputs = tf.keras.Input(shape=(8, 8, 3), name="image")
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(inputs, outputs)
    model.save(tmp_path / "model.keras")
    out, _ = ingest_tensorflow(tmp_path / "model.keras", tmp_path / "work", None)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: batch})
    np.testing.assert_allclose(got, model(batch).numpy(), rtol=1e-4, atol=1e-5)
