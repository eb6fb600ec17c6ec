"""A Hamerspace-style Python API over the one hamnet pipeline.

The API builds an :class:`~hamnet.core.config.OptimizeConfig` from a goal and constraints
and walks :func:`hamnet.pipeline.run_pipeline` in this process: there is no second
pipeline. Every candidate is measured, checked and selected exactly as by
``hamnet-optimize``.

Example:
    >>> from hamnet.api.optimizer import Constraints, Goal, Optimizer
    >>> opt = Optimizer.from_pytorch("model.pt")  # doctest: +SKIP
    >>> result = opt.optimize(Goal.AUTO, Constraints(target_size_mb=0.1))  # doctest: +SKIP
    >>> result.save_model("deploy/model.onnx")  # doctest: +SKIP

The :class:`Optimizer` is a thin facade over the API's parts: :mod:`.ingestion` loads
the user's model, :mod:`.data` checks the validation data, :mod:`.compiler` (pure)
turns a goal and constraints into a configuration, :mod:`.rounds` runs AUTO's rounds
(in-process or through Prefect) and :mod:`.report` builds the result. What depends
on the kind of network is asked of its family adapter (:mod:`hamnet.families`).

Work directory: unless ``work_dir`` is given, each optimizer works in a new folder
``.hamnet-api/<timestamp>-<id>`` under the current directory. It holds the source
model (a saved checkpoint or an ONNX export), the validation data (``data.npz``) and
one pipeline run per round (``round-1``, ``round-2``: artifacts and reports).

Models: a HAMNet (checkpoint or instance) supports every goal. Any other
``torch.nn.Module`` that traces (MLPs, convolutional nets, modules with several named
inputs, Hugging Face BERT-style encoders whose forward returns a ``ModelOutput``) is
exported to ONNX (opset 17, dynamic batch axis, dynamic sequence axis for integer
token inputs, parity-checked in ONNX Runtime) and optimized as an ONNX model, as is a
model given with :meth:`Optimizer.from_onnx` (any number of inputs of any rank):
quantization only.

Validation data: ``validation_data=(x, y)`` is taken as-is (not standardized) and
split by the pipeline into train/validation/test. ``x`` is one array of any rank
(``[N, features]``, ``[N, 1, 8, 8]``...) or a dict ``{input name: [N, ...]}`` for
models with several inputs (token ids stay int64). Without labels (``y=None``) the
metric is fidelity to the original model: for a HAMNet the labels are its own
predictions (top-1 agreement); for other models the original model's outputs are
stored with the data and every candidate scores top-1 agreement with them when they
are classifier logits (2-D), or the mean cosine similarity to them for any other
output (e.g. ``[batch, seq, hidden]`` hidden states). The report's
``accuracy_kind`` says which, and ``max_accuracy_drop`` applies to that metric.
Without validation data a HAMNet with 64 inputs and 10 classes is evaluated on the
built-in digits data.

Prefect: ``optimize(..., use_prefect=True)`` runs the same configuration through the
``hamnet-optimize`` flow (an ephemeral Prefect server unless ``PREFECT_API_URL`` is
set) instead of in this process; the result is the same :class:`OptimizationResult`.

Not supported yet: structured pruning or distillation of anything but HAMNet
checkpoints (in particular of arbitrary convolutional nets and of transformers
through the API).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.api import ingestion
from hamnet.api.compiler import AutoPlan, ModelFacts, ModelKind, compile_config, plan_for
from hamnet.api.constraints import Constraints, Goal, parse_goal
from hamnet.api.constraints import OptimizationGoal as OptimizationGoal
from hamnet.api.constraints import UnsupportedCombinationError as UnsupportedCombinationError
from hamnet.api.data import DataTarget, prepare_data
from hamnet.api.ingestion import DEFAULT_WORK_ROOT
from hamnet.api.report import CompressionReport as CompressionReport
from hamnet.api.report import OptimizationResult, ValidationFn, build_report
from hamnet.api.rounds import RoundRunner
from hamnet.core.api_names import API_NAMES
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.families.base import ModelFamily, ModelSource, detect_family, get_family

if TYPE_CHECKING:
    import numpy as np

    from hamnet.api.benchmarker import ModelMetrics
    from hamnet.core.config import OptimizeConfig


class Optimizer:
    """Optimize one model for a hardware target through the hamnet pipeline.

    Build it with :meth:`from_pytorch`, :meth:`from_onnx` or :meth:`from_tensorflow`.

    Args:
        model_path: A hamnet checkpoint (``.pt``) or an ONNX file.
        kind: "hamnet" or "onnx".
        work_dir: Where runs are written (default ``.hamnet-api/<timestamp>-<id>``).
        trust_checkpoint: Load checkpoints with pickled code (own files only).
        family: What AUTO plans for, a model family of :mod:`hamnet.families`
            ("hamnet", "transformer", "conv", "generic"); default: told from the
            model (attention in the graph: "transformer", a 4-D input: "conv").

    Attributes:
        input_names: The ONNX model's input names (None for a HAMNet).
        family: The model family AUTO plans for.

    Raises:
        ModelLoadError: The file does not exist or is not a readable model.
        ConfigError: ``family`` is unknown or does not load as ``kind``.
    """

    def __init__(
        self,
        model_path: str | Path,
        kind: ModelKind,
        *,
        work_dir: str | Path | None = None,
        trust_checkpoint: bool = False,
        family: str | None = None,
    ) -> None:
        path = Path(model_path).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist")
        ingestion.check_family(family, kind)
        self.model_path = path
        self.kind: ModelKind = kind
        self.work_dir = ingestion.work_directory(work_dir)
        self.trust_checkpoint = trust_checkpoint
        self.input_names: list[str] | None = None
        self._input_dims: dict[str, list[int | None]] = {}
        if kind == "onnx":
            from hamnet.pipeline.plan import onnx_inputs

            self._input_dims = onnx_inputs(path)
            self.input_names = list(self._input_dims)
        source = ModelSource(path=path, checkpoint=kind != "onnx", input_dims=self._input_dims)
        self.family: str = family or detect_family(source).name

    @property
    def adapter(self) -> type[ModelFamily]:
        """The family adapter of the model."""
        return get_family(self.family)

    # --- constructors -------------------------------------------------------------

    @classmethod
    def from_pytorch(
        cls,
        model: Any,
        input_shape: Sequence[int] | None = None,
        *,
        example_inputs: Any = None,
        input_names: Sequence[str] | None = None,
        dynamic_axes: dict[str, dict[int, str]] | None = None,
        trust_checkpoint: bool = False,
        work_dir: str | Path | None = None,
    ) -> Optimizer:
        """Take a hamnet checkpoint, a HAMNet, or any traceable ``torch.nn.Module``.

        A checkpoint path or HAMNet instance is optimized as a HAMNet (all goals); any
        other module is exported to ONNX (opset 17, dynamic batch axis, and a dynamic
        sequence axis for integer inputs of two or more axes; outputs checked against
        the module in ONNX Runtime) and optimized as an ONNX model (quantization
        only). A Hugging Face model whose forward returns a ``ModelOutput`` is exported
        with its first tensor (``last_hidden_state`` of a ``BertModel``, ``logits`` of a
        ``*ForSequenceClassification``); it is switched to eager attention first (so
        ONNX Runtime's transformer fusion matches) and its head count and hidden size
        are recorded in the ONNX metadata for the fusion (see
        :func:`hamnet.backends.export.export_module`).

        Args:
            model: A ``.pt``/``.pth`` hamnet checkpoint path, a HAMNet, or any module.
            input_shape: The shape of one input, batch first (e.g. ``[1, 64]`` or
                ``[1, 1, 8, 8]``); random float32 inputs of this shape trace the
                module. Give ``example_inputs`` instead for several inputs or integer
                inputs.
            example_inputs: A tensor, a tuple of tensors (positional arguments) or a
                dict ``{argument name: tensor}`` (keyword arguments, e.g.
                ``input_ids``/``attention_mask``) to trace the module with.
            input_names: Graph input names for a tensor or tuple (a dict's keys name
                its inputs).
            dynamic_axes: ``{name: {axis: axis name}}`` overriding the defaults.
            trust_checkpoint: Load the checkpoint with pickled code (own files only).
            work_dir: Where to write the source model and the runs.

        Raises:
            ModelLoadError: If the path does not exist or is not a checkpoint.
            ConfigError: If neither ``input_shape`` nor ``example_inputs`` is given for
                a generic module, or either is invalid.
            ExportError: If the module does not export, or ONNX Runtime's outputs
                differ from the module's.
        """
        if isinstance(model, (str, Path)):
            found = ingestion.ingest_checkpoint(model, trust_checkpoint=trust_checkpoint)
            return cls(found.path, found.kind, work_dir=work_dir, trust_checkpoint=trust_checkpoint)
        root = ingestion.work_directory(work_dir)
        found = ingestion.ingest_module(
            model,
            root,
            input_shape=input_shape,
            example_inputs=example_inputs,
            input_names=input_names,
            dynamic_axes=dynamic_axes,
        )
        return cls(found.path, found.kind, work_dir=root, family=found.family)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        *,
        work_dir: str | Path | None = None,
        family: str | None = None,
    ) -> Optimizer:
        """Take an ONNX model with any number of inputs of any rank.

        Args:
            path: The ``.onnx`` file.
            work_dir: Where to write the runs.
            family: What AUTO plans for; default: told from the graph (attention:
                "transformer", a 4-D input: "conv", else "generic").

        Raises:
            ModelLoadError: If the file does not exist or is not a readable ONNX model.
            ConfigError: If ``family`` is not a family of ONNX models.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"ONNX file {str(p)!r} does not exist")
        return cls(p, "onnx", work_dir=work_dir, family=family)

    @classmethod
    def from_tensorflow(
        cls,
        path: str | Path,
        input_shape: Sequence[int] | None = None,
        *,
        work_dir: str | Path | None = None,
    ) -> Optimizer:
        """Take a Keras file or SavedModel, converted to ONNX with tf2onnx.

        Raises:
            MissingDependencyError: If tensorflow or tf2onnx is not installed.
            ModelLoadError: If the path does not exist.
        """
        out, root = ingestion.ingest_tensorflow(path, work_dir, input_shape)
        return cls.from_onnx(out, work_dir=root)

    # --- optimization ---------------------------------------------------------------

    def model_size_mb(self) -> float:
        """Size of the source model file in MB."""
        return self.model_path.stat().st_size / 1e6

    def facts(self) -> ModelFacts:
        """What the config compiler knows about this model."""
        size = self.model_size_mb()
        return ModelFacts(self.model_path, self.adapter, size, self.trust_checkpoint)

    def build_config(
        self,
        goal: Goal | str = Goal.AUTO,
        constraints: Constraints | None = None,
        *,
        preferred_backends: Sequence[str] | None = None,
        data_path: str | Path | None = None,
        seed: int = 0,
        track: bool = False,
        plan: AutoPlan | None = None,
        escalate: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> OptimizeConfig:
        """Build the pipeline configuration for a goal (what :meth:`optimize` runs).

        See :func:`hamnet.api.compiler.compile_config` for the arguments.

        Raises:
            ConfigError: For an unknown goal or backend, or invalid settings.
            UnsupportedCombinationError: For pruning/distillation of a non-HAMNet.
        """
        from hamnet.core.hardware import load_profile

        goal = parse_goal(goal)
        constraints = constraints or Constraints()
        return compile_config(
            goal,
            constraints,
            self.facts(),
            load_profile(constraints.target_hardware),
            preferred_backends=preferred_backends,
            data_path=data_path,
            seed=seed,
            track=track,
            plan=plan,
            escalate=escalate,
            overrides=overrides,
        )

    def plan(self, constraints: Constraints | None = None) -> AutoPlan:
        """The :attr:`Goal.AUTO` plan for this model (see :func:`plan_for`)."""
        from hamnet.core.hardware import load_profile

        constraints = constraints or Constraints()
        profile = load_profile(constraints.target_hardware)
        return plan_for(
            constraints, self.kind, profile, model_size_mb=self.model_size_mb(), family=self.family
        )

    def benchmark(
        self, hardware: str = "cpu", num_runs: int = 100, batch_size: int = 1
    ) -> ModelMetrics:
        """Measure the original model, without optimizing it.

        The model is measured by :class:`~hamnet.api.benchmarker.Benchmarker` (the
        pipeline's measurement code) on random inputs, in the profile's first runtime
        that is installed and loads the model.

        Args:
            hardware: A hardware profile name, or "cpu" / "gpu" for the most specific
                profile of that kind present on this machine.
            num_runs: Timed calls for latency (at least 5).
            batch_size: Rows per timed latency call (throughput keeps the profile's
                throughput batch size).

        Returns:
            The :class:`~hamnet.api.benchmarker.ModelMetrics` (latency p50/p90,
            throughput, size, peak memory; accuracy is None).

        Raises:
            ConfigError: ``num_runs`` or ``batch_size`` out of range.
            HardwareProfileError: The profile is unknown or its hardware is absent.
            DataError: The model's inputs have no static shape to draw random inputs of.
        """
        return measure_model(
            self.model_path, hardware, num_runs, batch_size, inputs=len(self._input_dims)
        )

    def optimize(
        self,
        goal: Goal | str = Goal.AUTO,
        constraints: Constraints | None = None,
        *,
        validation_data: tuple[Any, np.ndarray | None] | None = None,
        validation_fn: ValidationFn | None = None,
        preferred_backends: Sequence[str] | None = None,
        work_dir: str | Path | None = None,
        track: bool = False,
        seed: int = 0,
        max_rounds: int = 2,
        verbose: bool = False,
        use_prefect: bool = False,
        _overrides: dict[str, Any] | None = None,
    ) -> OptimizationResult:
        """Optimize the model with the hamnet pipeline.

        Args:
            goal: A :class:`Goal` or its value.
            constraints: Limits and target (default: ``Constraints()``).
            validation_data: ``(x, y)``: ``x`` one array of any rank or a dict of
                named arrays (models with several inputs); ``y`` integer labels, or
                None to score fidelity to the original model (top-1 agreement for
                classifier outputs, mean cosine similarity otherwise; see the module
                docstring).
            validation_fn: ``fn(predict) -> float``, called once on the recommended
                model (``predict`` takes what ``x`` is: an array or a dict of arrays);
                its value is the report's ``custom_metric``.
            preferred_backends: Subset of ``["onnx", "openvino"]`` (default: those the
                profile lists).
            work_dir: Where to run (default: this optimizer's work directory).
            track: Log to MLflow (off by default).
            seed: Seed of the data split and of every stage.
            max_rounds: AUTO only: rounds allowed (a second escalates once when the
                constraints are not met).
            verbose: Print the pipeline's progress.
            use_prefect: Run each round as a ``hamnet-optimize`` Prefect flow run
                (ephemeral server unless ``PREFECT_API_URL`` is set; stage results are
                cached and retried as with ``hamnet run``) instead of in this process.

        Returns:
            The result; never empty: with no feasible candidate the nearest one is
            recommended and ``constraints_satisfied`` is False.

        Raises:
            ConfigError: For invalid arguments (``ValueError``).
            UnsupportedCombinationError: For unsupported goal/model combinations.
        """
        started = time.perf_counter()
        goal = parse_goal(goal)
        constraints = _check_arguments(constraints, max_rounds, use_prefect)
        root = ingestion.work_directory(work_dir) if work_dir is not None else self.work_dir
        target = DataTarget(self.adapter, self.model_path, self.trust_checkpoint, self._input_dims)
        data_path, accuracy_kind = prepare_data(target, validation_data, root)
        plan = self.plan(constraints) if goal is Goal.AUTO else None

        def compile_round(index: int) -> OptimizeConfig:
            return self.build_config(
                goal,
                constraints,
                preferred_backends=preferred_backends,
                data_path=data_path,
                seed=seed,
                track=track,
                plan=plan,
                escalate=index > 0,
                overrides=_overrides or {},
            )

        runner = RoundRunner(root, verbose=verbose, use_prefect=use_prefect)
        kept = runner.run_rounds(compile_round, max_rounds if goal is Goal.AUTO else 1)
        report = build_report(
            kept.result,
            accuracy_kind=accuracy_kind,
            seconds=time.perf_counter() - started,
            reasons=plan.reasons if plan else [f"goal {goal.value}"],
            config=kept.config,
            validation_fn=validation_fn,
            trust_checkpoint=self.trust_checkpoint,
        )
        return OptimizationResult.of_round(kept.result, kept.config, kept.rounds, report)


def _check_arguments(constraints: Any, max_rounds: Any, use_prefect: Any) -> Constraints:
    """Validate :meth:`Optimizer.optimize`'s plain arguments; return the constraints."""
    if constraints is None:
        constraints = Constraints()
    elif not isinstance(constraints, Constraints):
        raise ConfigError(
            f"constraints must be a Constraints, but got {type(constraints).__name__}"
        )
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ConfigError(f"max_rounds must be a positive integer, but got {max_rounds!r}")
    if not isinstance(use_prefect, bool):
        raise ConfigError(f"use_prefect must be True or False, but got {use_prefect!r}")
    return constraints


def measure_model(
    path: Path, hardware: str, num_runs: int, batch_size: int, *, inputs: int = 1
) -> ModelMetrics:
    """Measure one model file as :meth:`Optimizer.benchmark` does (arguments alike).

    ``inputs`` is the model's input count: with one input of static shape, random
    inputs of ``[batch_size, ...]`` are drawn; otherwise the Benchmarker's default.
    """
    from hamnet.api.benchmarker import Benchmarker
    from hamnet.core.hardware import resolve_hardware

    _check_count("num_runs", num_runs, 5)
    _check_count("batch_size", batch_size, 1)
    bench = Benchmarker(resolve_hardware(hardware), warmup=min(20, num_runs), repeats=num_runs)
    bench.profile = bench.profile.model_copy(update={"latency_batch_size": batch_size})
    shape = _input_shape(path, batch_size) if inputs <= 1 else None
    return bench.benchmark(path, input_shape=shape)[0]


def _input_shape(path: Path, batch_size: int) -> list[int] | None:
    """``[batch_size, ...]`` for a model whose first input has a static shape, else None."""
    from hamnet.backends.session import format_of, input_dims

    fmt = format_of(path)
    if fmt is None:
        return None
    rest = input_dims(path, fmt)[1:]
    if not rest or not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    return [batch_size, *(int(d) for d in rest if d is not None)]


def _check_count(name: str, value: object, least: int) -> None:
    """Raise unless ``value`` is an integer (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer of at least {least}, but got {value!r}")


__all__ = ["DEFAULT_WORK_ROOT", *API_NAMES]
