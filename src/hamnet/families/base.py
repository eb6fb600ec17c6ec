"""The model-family seam: the :class:`ModelFamily` plugin base and family detection.

A family adapter answers, for one kind of network, the questions the API and the
planner used to answer by testing names (``kind == "hamnet"``, ``family == "conv"``):
is this model one of mine (:meth:`ModelFamily.detect`), how is it loaded, run and
exported, what are its prunable groups, what does distillation read from it, and
which quantizers suit it (:meth:`ModelFamily.preferred_quantizers`).

Heavy libraries (torch, onnx, onnxruntime) are imported inside the methods that need
them, so listing the families and checking a family name import nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hamnet.backends.onnx_graph import GraphFacts as GraphFacts
from hamnet.backends.onnx_graph import graph_facts
from hamnet.core import registry
from hamnet.core.errors import ConfigError, ExportError, ModelLoadError
from hamnet.core.registry import Plugin
from hamnet.families import _modules
from hamnet.families._onnx import check_onnx_inputs

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "GraphFacts",
    "ModelFamily",
    "ModelSource",
    "PrunableGroup",
    "QuantizerChoice",
    "detect_family",
    "families",
    "get_family",
    "graph_facts",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth")
"""File suffixes of hamnet checkpoints."""


@dataclass(frozen=True)
class PrunableGroup:
    """One kind of structure that structured pruning removes whole (descriptive).

    Attributes:
        name: Short name (``"attention_heads"``, ``"ffn_channels"``...).
        kind: What one unit of the group is (a head, a channel, a filter, a neuron).
        where: The layers that hold the group.
    """

    name: str
    kind: str
    where: str


@dataclass(frozen=True)
class QuantizerChoice:
    """The quantization methods a family prefers on a target, and why.

    Attributes:
        methods: The methods, best first (empty: every method of the chosen backends).
        reason: One sentence for the plan (None when there is nothing to say).
    """

    methods: list[str] = field(default_factory=list)
    reason: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """What family detection looks at: the user's module and/or the model file.

    Attributes:
        module: The ``torch.nn.Module`` the user gave (None for a file).
        path: The model file: a hamnet checkpoint or an ONNX file (None for a bare module).
        checkpoint: Whether ``path`` is a hamnet checkpoint (None: told by its suffix,
            ``.pt``/``.pth``); any other file is read as ONNX.
        input_dims: The ONNX graph's inputs ``{name: dims}`` (None for a dynamic axis);
            read from ``path`` when not given.
    """

    module: Any = None
    path: Path | None = None
    checkpoint: bool | None = None
    input_dims: Mapping[str, Sequence[int | None]] | None = None

    @property
    def is_checkpoint(self) -> bool:
        """Whether the source is a hamnet checkpoint file."""
        if self.path is None:
            return False
        if self.checkpoint is not None:
            return self.checkpoint
        return self.path.suffix.lower() in CHECKPOINT_SUFFIXES

    @property
    def is_module(self) -> bool:
        """Whether the source is a module artifact (a user's torch module, ``.json``)."""
        return _modules.is_module_artifact(self.path)

    @property
    def is_onnx(self) -> bool:
        """Whether the source is an ONNX file."""
        return self.path is not None and not self.is_checkpoint and not self.is_module

    def onnx_inputs(self) -> Mapping[str, Sequence[int | None]]:
        """The ONNX graph's inputs (empty when the source is not an ONNX file)."""
        if self.input_dims is not None:
            return self.input_dims
        if self.is_module:
            assert self.path is not None
            return _modules.input_dims(self.path)
        if not self.is_onnx:
            return {}
        assert self.path is not None
        return graph_facts(self.path).inputs

    def onnx_op_types(self) -> frozenset[str]:
        """The ONNX graph's operator types (empty when the source is not an ONNX file)."""
        if not self.is_onnx:
            return frozenset()
        assert self.path is not None
        return graph_facts(self.path).op_types


class ModelFamily(Plugin):
    """Base of the model-family adapters (registry kind ``"family"``).

    Capability attributes, read by the API and the planner:
        loads_checkpoint: The pipeline loads the family from a hamnet checkpoint
            (and exports it itself); otherwise it is optimized as an ONNX model.
        can_prune: The pipeline's structured pruning stage can prune it when it is a
            torch model (a HAMNet checkpoint or a user's module; an ONNX file only
            after onnx2torch converts it).
        can_distill: The pipeline can recover pruned candidates by distillation.
        prunable_groups: The structures structured pruning removes whole.
        distill_targets: What distillation reads from the teacher.
        extra_quantizers: Methods the QUANTIZE goal runs beside the backends' own.
        pruner: Import path (``"module:function"``) of a pruner of the family's
            modules outside the pipeline, resolved by the compress layer (None: none).
        prune_reason: The plan's sentence when a latency bound adds pruning.
        why_not_prunable: The plan's sentence when pruning would help but cannot run.
        detect_order: Detection tries families by increasing order (generic last).
        prune_criterion: The pruning criterion the API's goals use for this family.
        prune_ratios: The pruning ratios AUTO and PRUNE try (None: the compiler's
            defaults, ``hamnet.api.compiler.PRUNE_RATIOS``).
        recovery_training: Training settings (``stages.distill.train``) AUTO gives the
            distillation that recovers a pruned user's module of this family.
    """

    kind: ClassVar[str] = "family"
    description: ClassVar[str] = ""
    loads_checkpoint: ClassVar[bool] = False
    can_prune: ClassVar[bool] = True
    can_distill: ClassVar[bool] = True
    prunable_groups: ClassVar[tuple[PrunableGroup, ...]] = ()
    distill_targets: ClassVar[tuple[str, ...]] = ("outputs",)
    extra_quantizers: ClassVar[tuple[str, ...]] = ()
    pruner: ClassVar[str | None] = None
    prune_reason: ClassVar[str] = (
        "latency-bound: structured pruning with torch-pruning's dependency graph, recovered "
        "by distillation from the original model"
    )
    why_not_prunable: ClassVar[str] = (
        "an ONNX file can be pruned only when onnx2torch converts it to PyTorch; give the "
        "torch module (or its source) to prune and distill it"
    )
    detect_order: ClassVar[int] = 50
    prune_criterion: ClassVar[str] = "l1"
    prune_ratios: ClassVar[tuple[float, ...] | None] = None
    recovery_training: ClassVar[Mapping[str, Any]] = {
        "epochs": 10, "learning_rate": 1e-3, "batch_size": 32, "warmup_epochs": 0,
    }  # fmt: skip

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        """Whether ``source`` is a model of this family.

        Args:
            source: The user's module and/or model file.

        Returns:
            True when this adapter should handle the model.
        """
        return False

    @classmethod
    def preferred_quantizers(
        cls, precisions: Sequence[str], runtimes: Sequence[str], profile_name: str
    ) -> QuantizerChoice:
        """The quantization methods that suit this family on a target.

        Args:
            precisions: The precisions the plan quantizes to ("int8", "fp16").
            runtimes: The runtimes the hardware profile lists.
            profile_name: The hardware profile's name (for the reason).

        Returns:
            The methods (empty: every method of the chosen backends) and the reason.
        """
        return QuantizerChoice()

    @classmethod
    def load(cls, path: Path, *, trust_checkpoint: bool = False) -> Any:
        """Load the model file: the ``nn.Module`` of a module artifact, else an
        ``onnx.ModelProto`` (a checkpoint family overrides).

        Raises:
            ModelLoadError: If the file is not a readable model of this family.
        """
        if _modules.is_module_artifact(path):
            return _modules.load_module(path, trust_checkpoint=trust_checkpoint)
        import onnx

        try:
            return onnx.load(str(path), load_external_data=False)
        except Exception as err:
            raise ModelLoadError(
                f"model file {str(path)!r} is not a readable ONNX model: {err}"
            ) from None

    @classmethod
    def predict(cls, path: Path, x: Any, *, trust_checkpoint: bool = False) -> Any:
        """The model's outputs on ``x`` (an array or a dict of named arrays), in batches.

        Returns:
            A numpy array, batch first.
        """
        if _modules.is_module_artifact(path):
            return _modules.predict_module(path, x, trust_checkpoint=trust_checkpoint)
        import onnxruntime as ort

        from hamnet.backends.session import OnnxRuntimeSession
        from hamnet.evaluate.measure import predict

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return predict(OnnxRuntimeSession(session), x, 64)

    @classmethod
    def fits_builtin_data(cls, path: Path, *, trust_checkpoint: bool = False) -> bool:
        """Whether the built-in digits data fits the model (so validation data is optional)."""
        return False

    @classmethod
    def export_onnx(
        cls,
        module: Any,
        example_inputs: Any,
        path: Path,
        *,
        input_names: Sequence[str] | None = None,
        dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
        opset: int = 17,
        ort_fused_attention: bool = False,
        trim_padding: str | None = None,
    ) -> Path:
        """Export a module of this family to ONNX, parity-checked in ONNX Runtime.

        Args:
            module: The module to export.
            example_inputs: Inputs to trace it with.
            path: The ONNX file to write.
            input_names: Names of the graph inputs.
            dynamic_axes: Dynamic axes per input/output name.
            opset: The ONNX opset.
            ort_fused_attention: Export attention as ONNX Runtime's fused contrib
                operator; only where :meth:`fusable_attention` says so.
            trim_padding: Skip padded tokens inside the graph (``"auto"``, a mask
                input's name, or None); see :func:`hamnet.backends.export.export_module`.

        Returns:
            The written file.

        Raises:
            ExportError: If the module does not export, its outputs differ, or fused
                attention is asked of a family that has none.
        """
        from hamnet.backends.export import export_module

        if ort_fused_attention and not cls.fusable_attention(module):
            raise ExportError(
                f"ort_fused_attention must be False for a {cls.name} model, but got True: "
                f"it has no attention hamnet can fuse"
            )
        return export_module(
            module,
            example_inputs,
            path,
            input_names=input_names,
            dynamic_axes=dynamic_axes,
            opset=opset,
            trim_padding=trim_padding,
        )

    @classmethod
    def fusable_attention(cls, module: Any) -> bool:
        """Whether ``module``'s attention can be exported as ONNX Runtime's fused operator."""
        return False

    @classmethod
    def check_data(cls, path: Path, dataset: Any, *, trust_checkpoint: bool = False) -> None:
        """Check the model file's inputs against the data's (names, ranks, static sizes).

        Args:
            path: The model file (an ONNX file here; a checkpoint family overrides).
            dataset: The :class:`~hamnet.training.data.Dataset` the pipeline runs on.
            trust_checkpoint: Whether a checkpoint may be unpickled in full.

        Raises:
            ModelLoadError: If the file is not a readable model or has no input.
            DataError: If its inputs differ from the data's.
        """
        if _modules.is_module_artifact(path):
            _modules.check_module_data(path, dataset, trust_checkpoint=trust_checkpoint)
            return
        check_onnx_inputs(path, dataset)


def families() -> list[type[ModelFamily]]:
    """Every registered family adapter, in detection order."""
    found = [_load(name) for name in registry.names("family")]
    return sorted(found, key=lambda f: (f.detect_order, f.name))


def get_family(name: str) -> type[ModelFamily]:
    """The adapter of the family ``name``.

    Raises:
        ConfigError: Unknown family, with the known ones and a did-you-mean hint.
    """
    return _load(name)


def detect_family(source: ModelSource) -> type[ModelFamily]:
    """The first family (in detection order) whose adapter recognises ``source``.

    A module artifact names its family when it was written; otherwise its module is
    loaded and told like a module the user gave.

    Raises:
        ConfigError: No adapter recognises it (cannot happen with ``generic``).
    """
    if source.is_module and source.module is None:
        assert source.path is not None
        named = _modules.family_name(source.path)
        if named is not None:
            return get_family(named)
        try:
            module = _modules.load_module(source.path)
        except ModelLoadError:  # a whole-module pickle needs trust; its family is unknown
            return get_family("generic")
        source = ModelSource(module=module, input_dims=source.onnx_inputs())
    for family in families():
        if family.detect(source):
            return family
    raise ConfigError(
        f"model family must be one of {list(registry.names('family'))}, but none "
        f"recognises {source.path or type(source.module).__name__}"
    )


def _load(name: str) -> type[ModelFamily]:
    family = registry.load("family", name)
    if not (isinstance(family, type) and issubclass(family, ModelFamily)):
        raise ConfigError(f"family {name!r} must be a ModelFamily, but got {family!r}")
    return family
