"""Run a stored model on a runtime: PyTorch, ONNX Runtime or OpenVINO.

Each runtime is one :class:`Runtime` subclass listed in :data:`RUNTIMES`. Loading an
artifact gives an :class:`InferenceSession` whose :meth:`~InferenceSession.run` maps
float32 ``[batch, features]`` to float32 logits ``[batch, classes]``; every candidate
is measured through that one method. The heavy libraries are imported inside the
methods that use them, so ``import hamnet`` stays fast.

A runtime never falls back silently: an execution provider or device the hardware
profile asks for but this machine lacks is a :class:`~hamnet.errors.HardwareProfileError`.

Example:
    >>> from hamnet.hardware import load_profile
    >>> session = load_session(ref, "openvino", load_profile("x86-avx2"))
    >>> logits = session.run(x_test[:8])
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.errors import (
    ConfigError,
    HardwareProfileError,
    MissingDependencyError,
    ModelLoadError,
)

if TYPE_CHECKING:
    from torch import nn

    from hamnet.artifacts import ArtifactRef
    from hamnet.hardware import HardwareProfile, RuntimeSpec


_PREPARED: set[tuple[str, ...]] = set()
"""Runtimes (with provider or device) already warmed up in this process."""


def require(module: str, package: str | None = None) -> Any:
    """Import an optional dependency, or explain how to install it.

    Args:
        module: The module to import, e.g. ``"onnxruntime.quantization"``.
        package: The pip package that provides it (defaults to the top-level module).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pip_name = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{module} is required for this feature but could not be imported ({err}); "
            f"install it with `pip install {pip_name}`"
        ) from err


def _as_input(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"inputs must be a 2-D array [batch, features], but got shape {x.shape}")
    return x


class InferenceSession(ABC):
    """A loaded model that maps float32 ``[B, F]`` inputs to float32 ``[B, C]`` logits.

    Attributes:
        runtime: Name of the runtime that runs the model (a key of :data:`RUNTIMES`).
    """

    runtime: str

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Return the logits for a batch of inputs.

        Args:
            x: Float32 inputs ``[batch, features]``.

        Returns:
            Float32 logits ``[batch, classes]``; a new array the caller may keep.
        """


class Runtime(ABC):
    """Loads artifacts of some formats into :class:`InferenceSession` objects.

    Attributes:
        name: The runtime's name in hardware profiles and :data:`RUNTIMES`.
        formats: The artifact formats it can load.
        package: The pip package that provides it.
        module: The module imported to use it.
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    package: ClassVar[str]
    module: ClassVar[str]

    @classmethod
    def is_available(cls) -> bool:
        """Return whether the runtime's library is installed (without importing it)."""
        return importlib.util.find_spec(cls.module) is not None

    def prepare(self, spec: RuntimeSpec) -> None:
        """Import the runtime's library (and plugins) ahead of loading a model.

        Measurement calls this before it samples memory, so a library's one-time import
        is not charged to the first model measured.

        Raises:
            MissingDependencyError: If the library is not installed.
        """
        require(self.module, self.package)

    @abstractmethod
    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession:
        """Load a stored model.

        Args:
            artifact: The model; its format must be one of :attr:`formats`.
            spec: The hardware profile's settings for this runtime (providers, device).
            threads: Intra-op threads; None lets the runtime use every core.
            trust_checkpoint: Allow pickled code in torch checkpoints (only for
                checkpoints you made yourself).

        Returns:
            A session ready to run.

        Raises:
            ModelLoadError: If the file is missing or has a format this runtime cannot load.
            HardwareProfileError: If the requested provider or device is absent.
            MissingDependencyError: If the runtime's library is not installed.
        """

    def throughput_session(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession | None:
        """Return a session tuned for throughput, or None when the latency one serves.

        Runtimes that compile differently for throughput (OpenVINO's ``THROUGHPUT``
        hint) override this; measurement uses it for the throughput figure only.
        """
        return None

    def _check(self, artifact: ArtifactRef) -> Path:
        if artifact.format not in self.formats:
            raise ModelLoadError(
                f"runtime {self.name!r} loads formats {list(self.formats)}, but the artifact "
                f"{artifact.path!r} has format {artifact.format!r}"
            )
        path = Path(artifact.path)
        missing = [str(p) for p in artifact.files if not p.is_file()]
        if missing:
            raise ModelLoadError(
                f"cannot load {artifact.format} model for {self.name!r}: files {missing} "
                f"do not exist"
            )
        return path


class TorchSession(InferenceSession):
    """Runs an in-memory torch module under ``torch.inference_mode``.

    Args:
        model: Maps float32 ``[B, F]`` to ``[B, C]``; it is put in eval mode.
        device: Torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(_as_input(x)).to(self.device)
        with torch.inference_mode():
            out = self.model(tensor)
        return np.array(out.float().cpu().numpy(), dtype=np.float32, copy=True)


class TorchRuntime(Runtime):
    """PyTorch eager execution of a hamnet checkpoint (format ``"torch"``).

    ``torch.set_num_threads`` is process-wide: loading with ``threads`` changes it for
    every torch computation in this process.
    """

    name = "torch"
    formats = ("torch",)
    package = "torch"
    module = "torch"

    def prepare(self, spec: RuntimeSpec) -> None:
        super().prepare(spec)
        importlib.import_module("hamnet.models")

    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession:
        import torch

        path = self._check(artifact)
        device = spec.device.lower()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HardwareProfileError(
                f"torch device {spec.device!r} requested, but torch sees no CUDA device "
                f"(torch {torch.__version__})"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        from hamnet.models import load_checkpoint

        model = load_checkpoint(path, trust=trust_checkpoint)
        return TorchSession(model, device)


class OnnxRuntimeSession(InferenceSession):
    """Runs an ONNX model in an ``onnxruntime.InferenceSession``."""

    runtime = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.output_name: str = session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return list(self.session.get_providers())

    def run(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: _as_input(x)})
        return np.asarray(out, dtype=np.float32)


class OnnxRuntime(Runtime):
    """ONNX Runtime with the profile's execution providers and all graph optimizations."""

    name = "onnxruntime"
    formats = ("onnx",)
    package = "onnxruntime"
    module = "onnxruntime"

    def prepare(self, spec: RuntimeSpec) -> None:
        """Import ONNX Runtime and run a one-node model on the profile's providers.

        The first session in a process allocates ~10 MB of one-time state (environment,
        allocators); running a trivial model first keeps that out of the first
        candidate's peak memory.
        """
        ort = require(self.module, self.package)
        providers = self._providers(ort, spec)
        key = (self.name, *providers)
        if key in _PREPARED:
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
        _PREPARED.add(key)

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
    ) -> InferenceSession:
        ort = require(self.module, self.package)
        path = self._check(artifact)
        providers = self._providers(ort, spec)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:
            raise ModelLoadError(
                f"ONNX Runtime cannot load {str(path)!r} with providers {providers}: "
                f"{type(err).__name__}: {err}"
            ) from err
        return OnnxRuntimeSession(session)


@lru_cache(maxsize=1)
def openvino_core() -> Any:
    """Return the process-wide ``openvino.Core`` (creating one is slow; it is cached)."""
    ov = require("openvino")
    return ov.Core()


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

    def run(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(x)
        parts = min(self.num_requests, len(x))
        if parts <= 1:
            request = self._requests[0]
            request.infer({0: x}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        chunks = np.array_split(x, parts)
        for request, chunk in zip(self._requests, chunks, strict=False):
            request.start_async({0: chunk}, share_inputs=True)
        outputs = []
        for request in self._requests[:parts]:
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outputs, axis=0)


class OpenVINORuntime(Runtime):
    """OpenVINO on the profile's device; loads IR (``model.xml``) and ONNX files.

    The CPU plugin computes in BF16 by default on CPUs with AMX or AVX-512 BF16, which
    would silently change an FP32 model's outputs: the inference precision is pinned to
    FP32 (INT8 layers of a quantized model still run in INT8).
    """

    name = "openvino"
    formats = ("openvino", "onnx")
    package = "openvino"
    module = "openvino"

    hints: ClassVar[tuple[str, ...]] = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

    def prepare(self, spec: RuntimeSpec) -> None:
        """Load the device plugin and compile a one-node model on the profile's device.

        Keeps the plugin's one-time set-up out of the first candidate's peak memory.
        """
        core = openvino_core()
        device = spec.device.upper()
        self._check_device(core, device)
        key = (self.name, device)
        if key in _PREPARED:
            return
        ov = require(self.module, self.package)
        ops = require("openvino.opset13", self.package)
        parameter = ops.parameter([-1, 1], np.float32)
        model = ov.Model([ops.relu(parameter)], [parameter], "hamnet-warmup")
        compiled = core.compile_model(model, device, self._config("LATENCY", None))
        compiled(np.zeros((1, 1), dtype=np.float32))
        _PREPARED.add(key)

    @staticmethod
    def _config(hint: str, threads: int | None) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
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
    ) -> InferenceSession:
        """Compile a model (see :meth:`Runtime.load`).

        Args:
            artifact: An OpenVINO IR or ONNX model.
            spec: The profile's OpenVINO settings; ``spec.device`` names the device.
            threads: ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every core.
            trust_checkpoint: Unused (IR and ONNX files hold no code).
            hint: ``PERFORMANCE_HINT``: ``"LATENCY"`` or ``"THROUGHPUT"``.

        Returns:
            A session ready to run.
        """
        hint = hint.upper()
        if hint not in self.hints:
            raise ConfigError(f"OpenVINO hint must be one of {list(self.hints)}, but got {hint!r}")
        path = self._check(artifact)
        core = openvino_core()
        device = spec.device.upper()
        self._check_device(core, device)
        config = self._config(hint, threads)
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


RUNTIMES: dict[str, type[Runtime]] = {
    TorchRuntime.name: TorchRuntime,
    OnnxRuntime.name: OnnxRuntime,
    OpenVINORuntime.name: OpenVINORuntime,
}
"""Every runtime by the name hardware profiles use."""


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime called ``name``.

    Raises:
        ConfigError: If no runtime has that name.
    """
    try:
        return RUNTIMES[name]()
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}: expected one of {sorted(RUNTIMES)}") from None


def runtime_spec(profile: HardwareProfile, runtime_name: str) -> RuntimeSpec:
    """Return the profile's settings for ``runtime_name``.

    Raises:
        ConfigError: If the runtime is unknown.
        HardwareProfileError: If the profile does not list the runtime.
    """
    get_runtime(runtime_name)
    spec = profile.runtime(runtime_name)
    if spec is None:
        raise HardwareProfileError(
            f"runtime {runtime_name!r} is not listed by hardware profile {profile.name!r}, "
            f"which lists {profile.runtime_names}"
        )
    return spec


def load_session(
    artifact: ArtifactRef,
    runtime_name: str,
    profile: HardwareProfile,
    *,
    trust_checkpoint: bool = False,
) -> InferenceSession:
    """Load a stored model in a runtime with the hardware profile's settings.

    Args:
        artifact: The model.
        runtime_name: A key of :data:`RUNTIMES` that the profile lists.
        profile: Supplies the runtime's providers/device and the thread count.
        trust_checkpoint: Allow pickled code in torch checkpoints.

    Returns:
        A session ready to run.

    Raises:
        ConfigError: If the runtime is unknown.
        HardwareProfileError: If the profile does not list the runtime, or the machine
            lacks the provider or device it asks for.
        ModelLoadError: If the model cannot be loaded.
    """
    spec = runtime_spec(profile, runtime_name)
    runtime = get_runtime(runtime_name)
    return runtime.load(artifact, spec, profile.threads, trust_checkpoint=trust_checkpoint)
