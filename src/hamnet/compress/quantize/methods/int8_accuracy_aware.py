"""ONNX Runtime static INT8 keeping its most harmful layers FP32 until an accuracy budget holds."""

from __future__ import annotations

from typing import ClassVar

from hamnet.compress.quantize.accuracy_aware import AccuracyAwareQuantizer, OrtMixedBuilder


class Int8AccuracyAware(AccuracyAwareQuantizer):
    """ONNX Runtime static QDQ INT8 with accuracy-driven FP32 fallback of harmful layers.

    Starts from full INT8 (as ``ort_static_int8``); while the validation score drops by
    more than ``max_accuracy_drop``, the layers that hurt most (measured one by one)
    are left out of quantization (``nodes_to_exclude``), greedily and then by a
    bounded Optuna search for the fastest assignment that meets the budget (see
    :mod:`hamnet.compress.quantize.accuracy_aware`).
    """

    name = "int8_accuracy_aware"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    requires = ("onnx", "onnxruntime", "optuna")
    builder_class = OrtMixedBuilder
    notes: ClassVar[list[str]] = [
        "Layers whose INT8 error broke the accuracy budget stay FP32 (QDQ pairs left out); "
        "the rest is static INT8 calibrated on the calibration samples.",
        "The budget is checked on the validation split, which therefore also chose the "
        "assignment: the test split is the unbiased figure.",
    ]


PLUGIN = Int8AccuracyAware
