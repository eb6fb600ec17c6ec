"""NNCF INT8 (OpenVINO) keeping its most harmful layers FP32 until an accuracy budget holds."""

from __future__ import annotations

from typing import ClassVar

from hamnet.compress.quantize.accuracy_aware import AccuracyAwareQuantizer, OpenVinoMixedBuilder


class NncfInt8AccuracyAware(AccuracyAwareQuantizer):
    """NNCF post-training INT8 (OpenVINO) with accuracy-driven FP32 fallback of harmful layers.

    Starts from full INT8 (as ``nncf_int8``); while the validation score drops by more
    than ``max_accuracy_drop``, the layers that hurt most (measured one by one) go
    into NNCF's ``ignored_scope`` and stay FP32, greedily and then by a bounded Optuna
    search for the fastest assignment that meets the budget (see
    :mod:`hamnet.compress.quantize.accuracy_aware`).
    """

    name = "nncf_int8_accuracy_aware"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    precision = "int8"
    requires = ("onnx", "openvino", "nncf", "optuna")
    builder_class = OpenVinoMixedBuilder
    notes: ClassVar[list[str]] = [
        "Layers whose INT8 error broke the accuracy budget stay FP32 (NNCF ignored_scope); "
        "the rest is NNCF INT8 calibrated on the calibration samples.",
        "The budget is checked on the validation split, which therefore also chose the "
        "assignment: the test split is the unbiased figure.",
    ]


PLUGIN = NncfInt8AccuracyAware
