"""OpenVINO: runs IR (format ``"openvino"``, ``model.xml`` beside ``model.bin``) and ONNX
files on the profile's device, and converts ONNX files to IR (:func:`convert_openvino`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.inputs import Inputs, feed_inputs
from hamnet.backends.runtimes.base import PREPARED, InferenceSession, Runtime, require
from hamnet.core.errors import ConfigError, ExportError, HardwareProfileError, ModelLoadError

if TYPE_CHECKING:
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import RuntimeSpec


@lru_cache(maxsize=1)
def openvino_core() -> Any:
    """Return the process-wide ``openvino.Core`` (creating one is slow; it is cached)."""
    ov = require("openvino")
    return ov.Core()


def convert_openvino(
    onnx_path: str | Path, xml_path: str | Path, *, compress_to_fp16: bool = False
) -> Path:
    """Convert an ONNX file to OpenVINO IR.

    ``openvino.save_model`` compresses weights to FP16 unless told otherwise; here FP32
    is the default so an exported model keeps its precision.

    Args:
        onnx_path: The source ONNX file.
        xml_path: Where to write ``model.xml`` (``model.bin`` is written beside it).
        compress_to_fp16: Store the weights as FP16 (halves the file).

    Returns:
        The path of the ``.xml`` file.

    Raises:
        ExportError: If conversion or saving fails.
        MissingDependencyError: If ``openvino`` is not installed.
    """
    ov = require("openvino")
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ExportError(f"OpenVINO IR path must end with .xml, but got {str(xml_path)!r}")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as err:
        raise ExportError(
            f"OpenVINO conversion of {str(onnx_path)!r} to {str(xml_path)!r} failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    return xml_path


class OpenVINOSession(InferenceSession):
    """Runs a compiled OpenVINO model.

    With one inference request (the ``LATENCY`` hint) a batch runs in one call. With
    more (the ``THROUGHPUT`` hint compiles several streams) the batch is split into
    that many parts that run in parallel, one per stream. A session reuses its
    requests, so it must not be shared between threads.
    """

    runtime = "openvino"

    def __init__(self, compiled: Any, hint: str) -> None:
        self.compiled = compiled
        self.hint = hint
        self.num_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [compiled.create_infer_request() for _ in range(self.num_requests)]
        self.input_names: list[str] = [
            next(iter(port.get_names()), str(i)) for i, port in enumerate(compiled.inputs)
        ]
        self._ranks: dict[str, int | None] = {}
        self._dtypes: dict[str, Any] = {}
        for name, port in zip(self.input_names, compiled.inputs, strict=True):
            shape = port.get_partial_shape()
            self._ranks[name] = len(shape) if shape.rank.is_static else None
            self._dtypes[name] = _ov_dtype(port)

    def run(self, x: Inputs) -> np.ndarray:
        feed = feed_inputs(x, self.input_names, self._ranks, self._dtypes)
        n = len(next(iter(feed.values())))
        parts = min(self.num_requests, n)
        if parts <= 1:
            request = self._requests[0]
            request.infer(feed, share_inputs=True)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        bounds = np.array_split(np.arange(n), parts)
        for request, rows in zip(self._requests, bounds, strict=False):
            chunk = {k: v[rows[0] : rows[-1] + 1] for k, v in feed.items()}
            request.start_async(chunk, share_inputs=True)
        outputs = []
        for request in self._requests[:parts]:
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outputs, axis=0)

    def profiling_info(self) -> list[Any]:
        """The per-node timings of the last call (``openvino.ProfilingInfo`` objects).

        Each holds the node's name and type, the kernel that ran it (``exec_type``,
        e.g. ``brgemm_avx512_I8``), its status and ``real_time``. Only a model compiled
        with ``perf_count=True`` (see :meth:`OpenVINORuntime.load`) collects them.

        Raises:
            ModelLoadError: If the model was compiled without ``PERF_COUNT``.
        """
        if not bool(self.compiled.get_property("PERF_COUNT")):
            raise ModelLoadError(
                "an OpenVINO model must be compiled with perf_count=True to be profiled, "
                "but this one was compiled without PERF_COUNT"
            )
        return list(self._requests[0].get_profiling_info())


def _ov_dtype(port: Any) -> Any:
    """The numpy dtype of an OpenVINO input port (None when it cannot be told)."""
    try:
        return np.dtype(port.get_element_type().to_dtype())
    except Exception:
        return None


class OpenVINORuntime(Runtime):
    """OpenVINO on the profile's device; loads IR (``model.xml``) and ONNX files.

    The CPU plugin computes in BF16 by default on CPUs with AMX or AVX-512 BF16, which
    would silently change an FP32 model's outputs: the inference precision is pinned to
    FP32 (INT8 layers of a quantized model still run in INT8).
    """

    name: ClassVar[str] = "openvino"
    formats: ClassVar[tuple[str, ...]] = ("openvino", "onnx")
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {"openvino": (".xml", ".bin")}
    package: ClassVar[str] = "openvino"
    module: ClassVar[str] = "openvino"

    hints: ClassVar[tuple[str, ...]] = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

    @classmethod
    def input_dims(cls, path: Path) -> list[int | None]:
        """Read the dims of an OpenVINO IR file's first input (``model.xml``)."""
        shape = openvino_core().read_model(str(path)).inputs[0].partial_shape
        return [None if d.is_dynamic else d.get_length() for d in shape]

    @classmethod
    def weight_precision(cls, path: Path) -> str | None:
        """``"int8"`` with ``FakeQuantize`` layers, ``"mixed"`` with integer weight constants
        but no ``FakeQuantize`` (weight-only compression: INT8/INT4 weights, FP32
        activations), ``"fp16"`` with FP16 constants, else fp32."""
        text = Path(path).read_text(errors="replace")
        if 'type="FakeQuantize"' in text:
            return "int8"
        if any(f'element_type="{t}"' in text for t in ("u8", "i8", "u4", "i4")):
            return "mixed"
        return "fp16" if 'element_type="f16"' in text else "fp32"

    def prepare(self, spec: RuntimeSpec) -> None:
        """Load the device plugin and compile a one-node model on the profile's device.

        Keeps the plugin's one-time set-up out of the first candidate's peak memory.
        """
        core = openvino_core()
        device = spec.device.upper()
        self._check_device(core, device)
        key = (self.name, device)
        if key in PREPARED:
            return
        ov = require(self.module, self.package)
        ops = require("openvino.opset13", self.package)
        parameter = ops.parameter([-1, 1], np.float32)
        model = ov.Model([ops.relu(parameter)], [parameter], "hamnet-warmup")
        compiled = core.compile_model(model, device, self._config("LATENCY", None))
        compiled(np.zeros((1, 1), dtype=np.float32))
        PREPARED.add(key)

    @staticmethod
    def _config(hint: str, threads: int | None, perf_count: bool = False) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if perf_count:
            config["PERF_COUNT"] = True
        return config

    @staticmethod
    def _check_device(core: Any, device: str) -> None:
        available = core.available_devices
        if device not in available and not any(d.startswith(device) for d in available):
            raise HardwareProfileError(
                f"OpenVINO device {device!r} requested, but this machine offers {available}"
            )

    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
        hint: str = "LATENCY",
        perf_count: bool = False,
    ) -> InferenceSession:
        """Compile a model (see :meth:`Runtime.load`).

        Args:
            artifact: An OpenVINO IR or ONNX model.
            spec: The profile's OpenVINO settings; ``spec.device`` names the device.
            threads: ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every core.
            trust_checkpoint: Unused (IR and ONNX files hold no code).
            hint: ``PERFORMANCE_HINT``: ``"LATENCY"`` or ``"THROUGHPUT"``.
            perf_count: Collect per-node timings (``PERF_COUNT``), read back with
                :meth:`OpenVINOSession.profiling_info`; off by default (it costs time).

        Returns:
            A session ready to run.

        Raises:
            ConfigError: If ``hint`` is not one of :attr:`hints`.
        """
        hint = hint.upper()
        if hint not in self.hints:
            raise ConfigError(f"OpenVINO hint must be one of {list(self.hints)}, but got {hint!r}")
        path = self._check(artifact)
        core = openvino_core()
        device = spec.device.upper()
        self._check_device(core, device)
        config = self._config(hint, threads, perf_count)
        try:
            compiled = core.compile_model(str(path), device, config=config)
        except Exception as err:
            raise ModelLoadError(
                f"OpenVINO cannot compile {str(path)!r} for {device} with {config}: "
                f"{type(err).__name__}: {err}"
            ) from err
        return OpenVINOSession(compiled, hint)

    def throughput_session(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession | None:
        return self.load(artifact, spec, threads, hint="THROUGHPUT")


PLUGIN = OpenVINORuntime
