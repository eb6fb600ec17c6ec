"""ONNX Runtime: runs ONNX files (format ``"onnx"``, a ``.onnx`` file) on the profile's
execution providers with every graph optimization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends import onnx_graph
from hamnet.backends.inputs import Inputs, feed_inputs
from hamnet.backends.runtimes.base import PREPARED, InferenceSession, Runtime, require
from hamnet.core.errors import HardwareProfileError, ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path

    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import RuntimeSpec

ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
"""ONNX Runtime's input type names -> numpy dtypes."""


class OnnxRuntimeSession(InferenceSession):
    """Runs an ONNX model in an ``onnxruntime.InferenceSession``."""

    runtime = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        inputs = session.get_inputs()
        self.input_names: list[str] = [i.name for i in inputs]
        self.input_name: str = self.input_names[0]
        self.output_name: str = session.get_outputs()[0].name
        self._ranks = {i.name: len(i.shape) if i.shape is not None else None for i in inputs}
        self._dtypes = {i.name: ONNX_DTYPES.get(i.type) for i in inputs}
        self._outputs = [self.output_name]
        # The common case, one C-contiguous array of the declared rank and dtype, skips
        # the general checks: at batch 1 they cost ~2.3 us, ~15% of a 15 us model's call.
        self._fast: tuple[int | None, Any] | None = (
            (self._ranks[self.input_name], self._dtypes[self.input_name])
            if len(inputs) == 1 and self._dtypes[self.input_name] is not None
            else None
        )

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return list(self.session.get_providers())

    def end_profiling(self) -> str:
        """Stop ONNX Runtime's profiler and return the path of its JSON trace.

        Only a session loaded with ``profile_prefix`` (see :meth:`OnnxRuntime.load`)
        profiles; the trace holds one event per node and run (op type, provider,
        duration in microseconds).

        Raises:
            ModelLoadError: If the session was loaded without profiling.
        """
        path = str(self.session.end_profiling())
        if not path:
            raise ModelLoadError(
                "an ONNX Runtime session must be loaded with profile_prefix to be profiled, "
                "but this one was loaded without it (no trace was written)"
            )
        return path

    def run(self, x: Inputs) -> np.ndarray:
        fast = self._fast
        if (
            fast is not None
            and type(x) is np.ndarray
            and x.dtype == fast[1]
            and x.ndim == fast[0]
            and x.flags.c_contiguous
        ):
            out = self.session.run(self._outputs, {self.input_name: x})[0]
        else:
            feed = feed_inputs(x, self.input_names, self._ranks, self._dtypes)
            (out,) = self.session.run(self._outputs, feed)
        return out if out.dtype == np.float32 else np.asarray(out, dtype=np.float32)


class OnnxRuntime(Runtime):
    """ONNX Runtime with the profile's execution providers and all graph optimizations."""

    name: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {"onnx": (".onnx",)}
    package: ClassVar[str] = "onnxruntime"
    module: ClassVar[str] = "onnxruntime"

    @classmethod
    def input_dims(cls, path: Path) -> list[int | None]:
        """Read the dims of an ONNX file's first non-initializer input.

        Raises:
            ModelLoadError: If the file is not a readable ONNX model.
        """
        return onnx_graph.input_dims(path)

    @classmethod
    def weight_precision(cls, path: Path) -> str | None:
        """``"int8"`` with quantization operators, ``"fp16"`` with FP16 weights, else ``"fp32"``.

        Raises:
            ModelLoadError: If the file is not a readable ONNX model.
        """
        return onnx_graph.graph_facts(path).precision

    def prepare(self, spec: RuntimeSpec) -> None:
        """Import ONNX Runtime and run a one-node model on the profile's providers.

        The first session in a process allocates ~10 MB of one-time state (environment,
        allocators); running a trivial model first keeps that out of the first
        candidate's peak memory.
        """
        ort = require(self.module, self.package)
        providers = self._providers(ort, spec)
        key = (self.name, *providers)
        if key in PREPARED:
            return
        onnx = require("onnx")
        helper = onnx.helper
        value = helper.make_tensor_value_info
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "hamnet-warmup",
            [value("x", onnx.TensorProto.FLOAT, [None, 1])],
            [value("y", onnx.TensorProto.FLOAT, [None, 1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), providers=providers)
        session.run(None, {"x": np.zeros((1, 1), dtype=np.float32)})
        PREPARED.add(key)

    @staticmethod
    def _providers(ort: Any, spec: RuntimeSpec) -> list[str]:
        providers = list(spec.providers) or ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        absent = [p for p in providers if p not in available]
        if absent:
            raise HardwareProfileError(
                f"ONNX Runtime execution providers {absent} requested, but this onnxruntime "
                f"{ort.__version__} offers only {available} (install the matching "
                f"onnxruntime build, e.g. onnxruntime-gpu, or pick another profile)"
            )
        return providers

    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
        profile_prefix: str | None = None,
    ) -> InferenceSession:
        """Load an ONNX file (see :meth:`Runtime.load`).

        Args:
            artifact: An ONNX model.
            spec: The profile's ONNX Runtime settings (execution providers).
            threads: Intra-op threads; None lets ONNX Runtime use every core.
            trust_checkpoint: Unused (ONNX files hold no code).
            profile_prefix: Turn ONNX Runtime's profiler on and write its JSON trace
                to files starting with this path (read it back with
                :meth:`OnnxRuntimeSession.end_profiling`); None (the default) does not
                profile.
        """
        ort = require(self.module, self.package)
        path = self._check(artifact)
        providers = self._providers(ort, spec)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:
            raise ModelLoadError(
                f"ONNX Runtime cannot load {str(path)!r} with providers {providers}: "
                f"{type(err).__name__}: {err}"
            ) from err
        return OnnxRuntimeSession(session)


PLUGIN = OnnxRuntime
