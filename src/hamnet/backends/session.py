"""Run a stored model on a runtime: PyTorch, ONNX Runtime or OpenVINO.

Each runtime is one :class:`Runtime` subclass listed in :data:`RUNTIMES`. Loading an
artifact gives an :class:`InferenceSession` whose :meth:`~InferenceSession.run` maps a
batch of inputs (one array of any rank, or named arrays for multi-input models such as
BERT's ``input_ids``/``attention_mask``) to the model's first output as float32 (logits
``[batch, classes]`` for a classifier); every candidate is measured through that one
method. The heavy libraries are imported inside the
methods that use them, so ``import hamnet`` stays fast.

A runtime never falls back silently: an execution provider or device the hardware
profile asks for but this machine lacks is a :class:`~hamnet.core.errors.HardwareProfileError`.

Example:
    >>> from hamnet.core.hardware import load_profile
    >>> session = load_session(ref, "openvino", load_profile("x86-avx2"))
    >>> logits = session.run(x_test[:8])
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import numpy as np

from hamnet.core.errors import (
    ConfigError,
    DataError,
    HardwareProfileError,
    MissingDependencyError,
    ModelLoadError,
)

if TYPE_CHECKING:
    from torch import nn

    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import HardwareProfile, RuntimeSpec


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


Inputs: TypeAlias = np.ndarray | Mapping[str, np.ndarray]
"""What a session runs on: one array (axis 0 is the batch), a mapping of named arrays,
or a structured array with one field per named input (see :func:`pack_inputs`)."""


def _plain(a: Any) -> np.ndarray:
    """One input array, contiguous; floating point becomes float32, other dtypes stay."""
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def pack_inputs(x: Inputs) -> np.ndarray:
    """Return inputs as one array whose axis 0 is the batch.

    A plain array is returned contiguous (floating point as float32, integers kept). A
    mapping of named arrays becomes a structured array with one field per input (field
    shape = the input's shape without the batch axis, dtype kept), so batches of every
    input are sliced, repeated and concatenated together along axis 0.

    Args:
        x: One array, a mapping of named arrays, or an already packed structured array.

    Returns:
        The packed array.

    Raises:
        DataError: If the mapping is empty, an entry is not at least 1-D, or the
            entries have different batch sizes.
    """
    if isinstance(x, Mapping):
        if not x:
            raise DataError("inputs must hold at least one named array, but got an empty mapping")
        arrays = {str(k): _plain(v) for k, v in x.items()}
        bad = {k: list(a.shape) for k, a in arrays.items() if a.ndim < 1}
        if bad:
            raise DataError(f"every named input must have a batch axis, but got shapes {bad}")
        sizes = {k: len(a) for k, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"named inputs must have the same batch size (axis 0), but got {sizes}")
        dtype = np.dtype([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()])
        packed = np.empty(next(iter(sizes.values())), dtype=dtype)
        for k, a in arrays.items():
            packed[k] = a
        return packed
    a = np.asarray(x)
    if a.dtype.names:
        return np.ascontiguousarray(a)
    return _plain(a)


def input_names(x: np.ndarray | Mapping[str, np.ndarray]) -> tuple[str, ...] | None:
    """The input names of a mapping or packed array; None for one unnamed array."""
    if isinstance(x, Mapping):
        return tuple(str(k) for k in x)
    names = np.asarray(x).dtype.names
    return tuple(names) if names else None


def unpack_inputs(x: Inputs) -> dict[str, np.ndarray] | np.ndarray:
    """Return named inputs as a dict of contiguous arrays, or the one plain array.

    The inverse of :func:`pack_inputs`: a structured array or a mapping gives a dict
    ``{name: array}``; a plain array is returned contiguous (floats as float32).
    """
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    a = np.asarray(x)
    if a.dtype.names:
        return {name: np.ascontiguousarray(a[name]) for name in a.dtype.names}
    return _plain(a)


def batch_size_of(x: Inputs) -> int:
    """The number of samples (axis 0) of one array or of named inputs."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _as_input(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"inputs must be a 2-D array [batch, features], but got shape {x.shape}")
    return x


_ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _feed(
    x: Inputs, names: list[str], ranks: dict[str, int | None], dtypes: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Map inputs to a model's named inputs, each cast to the dtype the model declares.

    Raises:
        DataError: If the names do not match, or a single array is given to a model
            with several inputs, or an array's rank differs from the model's.
    """
    data = unpack_inputs(x)
    if isinstance(data, dict):
        if sorted(data) != sorted(names):
            raise DataError(
                f"inputs must be named {names} (the model's inputs), but got {sorted(data)}"
            )
        feed = data
    else:
        if len(names) != 1:
            raise DataError(
                f"inputs must be a mapping of the model's {len(names)} named inputs {names}, "
                f"but got one array of shape {list(data.shape)}"
            )
        feed = {names[0]: data}
    out: dict[str, np.ndarray] = {}
    for name, array in feed.items():
        rank = ranks.get(name)
        if rank is not None and array.ndim != rank:
            if rank == 2 and len(names) == 1:
                raise ValueError(
                    f"inputs must be a 2-D array [batch, features], but got shape {array.shape}"
                )
            raise DataError(
                f"input {name!r} must be a {rank}-D array, but got shape {list(array.shape)}"
            )
        want = dtypes.get(name)
        out[name] = array if want is None or array.dtype == want else array.astype(want)
    return out


class InferenceSession(ABC):
    """A loaded model that maps a batch of inputs to its first output as float32.

    Inputs are one array of any rank (axis 0 is the batch; a HAMNet takes float32
    ``[B, F]``) or, for models with several inputs, a mapping ``{input name: array}``
    (or a structured array from :func:`pack_inputs`). Integer inputs (token ids,
    attention masks) keep their dtype; floating point inputs run as float32.

    Attributes:
        runtime: Name of the runtime that runs the model (a key of :data:`RUNTIMES`).
    """

    runtime: str

    @abstractmethod
    def run(self, x: Inputs) -> np.ndarray:
        """Return the model's first output for a batch of inputs.

        Args:
            x: One array ``[batch, ...]`` or a mapping of named arrays ``[batch, ...]``.

        Returns:
            Float32 output ``[batch, ...]`` (logits ``[batch, classes]`` for a
            classifier); a new array the caller may keep.

        Raises:
            DataError: If named inputs do not match the model's inputs.
            ValueError: If a single array has the wrong rank.
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

    Named inputs are passed as keyword arguments; a module returning a tuple, a dict
    or a Hugging Face ``ModelOutput`` gives its first tensor.

    Args:
        model: Maps float32 ``[B, F]`` to ``[B, C]`` (a HAMNet), or any module; it is
            put in eval mode.
        device: Torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def run(self, x: Inputs) -> np.ndarray:
        import torch

        data = unpack_inputs(x)
        with torch.inference_mode():
            if isinstance(data, dict):
                out = self.model(
                    **{k: torch.from_numpy(v).to(self.device) for k, v in data.items()}
                )
            else:
                if data.ndim < 2:
                    _as_input(data)  # the 2-D error message
                out = self.model(torch.from_numpy(data).to(self.device))
        return np.array(first_tensor(out).float().cpu().numpy(), dtype=np.float32, copy=True)


def first_tensor(out: Any) -> Any:
    """The first tensor of a module's output (a tensor, tuple, dict or ``ModelOutput``).

    Raises:
        DataError: If the output holds no tensor.
    """
    import torch

    if isinstance(out, torch.Tensor):
        return out
    values = list(out.values()) if isinstance(out, Mapping) else list(out)
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise DataError(f"model output must hold a tensor, but got {type(out).__name__}")


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
        inputs = session.get_inputs()
        self.input_names: list[str] = [i.name for i in inputs]
        self.input_name: str = self.input_names[0]
        self.output_name: str = session.get_outputs()[0].name
        self._ranks = {i.name: len(i.shape) if i.shape is not None else None for i in inputs}
        self._dtypes = {i.name: _ONNX_DTYPES.get(i.type) for i in inputs}
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
            feed = _feed(x, self.input_names, self._ranks, self._dtypes)
            (out,) = self.session.run(self._outputs, feed)
        return out if out.dtype == np.float32 else np.asarray(out, dtype=np.float32)


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
        feed = _feed(x, self.input_names, self._ranks, self._dtypes)
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
