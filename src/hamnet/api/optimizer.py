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

Models: every goal works on a HAMNet (checkpoint or instance) and on a user's own
module: any ``torch.nn.Module`` (MLPs, convolutional nets, Hugging Face encoders and
classifiers, modules with ``nn.MultiheadAttention``), a whole-module file, a
torchvision/timm name with weights, or a Hugging Face directory. A user's module is
kept as a module artifact (:mod:`hamnet.models.sources`): pruned with torch-pruning's
dependency graph, recovered by distillation from the original, exported to ONNX and
quantized. A module with several positional inputs is exported to ONNX and only
quantized; an ONNX file (:meth:`Optimizer.from_onnx`) is converted with onnx2torch for
pruning, or only quantized when it does not convert (the plan says why).

Data: ``validation_data=(x, y)`` is taken as-is (not standardized). ``x`` is one array
of any rank or a dict ``{input name: [N, ...]}`` (token ids stay int64). With
``train_data`` the training rows train (pruning calibration, distillation) and the
validation data is split into validation (selection) and test (scored once, for the
recommended model and the baseline); without it the pipeline splits the validation
data into all three, and AUTO runs only post-training methods on a user's module.
Without labels (``y=None``) the metric is fidelity to the original model, chosen by
what the output means (:func:`hamnet.evaluate.fidelity.fidelity_kind`): top-1
agreement for class scores, mean cosine similarity for embeddings and hidden states.
The report's ``accuracy_kind`` says which, and ``max_accuracy_drop`` applies to that
metric. Without validation data a HAMNet with 64 inputs and 10 classes is evaluated on
the built-in digits data.

Prefect: ``optimize(..., use_prefect=True)`` runs the same configuration through the
``hamnet-optimize`` flow (an ephemeral Prefect server unless ``PREFECT_API_URL`` is
set) instead of in this process; the result is the same :class:`OptimizationResult`.
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
from hamnet.api.training_data import prepare_train_data
from hamnet.core.api_names import API_NAMES
from hamnet.core.config import deep_merge
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.evaluate.fidelity import declared_fidelity
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
        self.why_not_prunable: str | None = None
        self.module_path: Path | None = None
        if kind == "onnx":
            from hamnet.pipeline.plan import onnx_inputs

            self._input_dims = onnx_inputs(path)
            self.input_names = list(self._input_dims)
        if kind == "module":
            source = ModelSource(path=path, checkpoint=False)
            self._input_dims = {k: list(v) for k, v in source.onnx_inputs().items()}
            self.input_names = list(self._input_dims)
        else:
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
        weights: str | Path | None = None,
        task: str = "auto",
    ) -> Optimizer:
        """Take a HAMNet, any ``torch.nn.Module``, or where to load one from.

        A hamnet checkpoint or HAMNet instance is optimized as a HAMNet. Any other
        module (an MLP, a convolutional net, a Hugging Face encoder or classifier, a
        module with ``nn.MultiheadAttention``...) is kept as a torch module: every goal
        works on it (structured pruning with torch-pruning's dependency graph,
        distillation from the original, quantization of its ONNX export). Named inputs
        are keyword arguments (``example_inputs`` as a dict). A module taking several
        positional inputs (``example_inputs`` a tuple) is exported to ONNX instead and
        only quantized.

        ``model`` may also name a source: a whole-module file saved with
        ``torch.save(model)`` (loading it runs pickled code, so it needs
        ``trust_checkpoint=True``), ``"torchvision:NAME"`` or ``"timm:NAME"`` with a
        ``weights`` state_dict file, or a Hugging Face model directory (config and
        safetensors; remote code is never run; ``task`` "embedding" mean-pools the
        encoder's hidden states over the attention mask, "classification" returns
        the logits, "auto" reads the config).

        Args:
            model: A module, a hamnet checkpoint path, or a source as above.
            input_shape: The shape of one float input, batch first (e.g. ``[1, 64]``
                or ``[1, 1, 8, 8]``).
            example_inputs: A tensor, a dict ``{argument name: tensor}`` (e.g.
                ``input_ids``/``attention_mask``), or a tuple of tensors (positional
                arguments; ONNX only).
            input_names: Graph input names for a tuple of positional inputs.
            dynamic_axes: ``{name: {axis: axis name}}`` for a tuple of positional inputs.
            trust_checkpoint: Load files with pickled code (own files only).
            work_dir: Where to write the source model and the runs.
            weights: The state_dict file of a torchvision/timm architecture.
            task: What a Hugging Face directory's model outputs (see above).

        Raises:
            ModelLoadError: The path does not exist or does not load (a whole-module
                file without ``trust_checkpoint``, a directory that needs remote code).
            ConfigError: Neither ``input_shape`` nor ``example_inputs`` is given for a
                module, either is invalid, or a torchvision/timm name is unknown.
            DataError: The module does not run on the example inputs.
            ExportError: A module with positional inputs does not export.
        """
        if isinstance(model, (str, Path)):
            return cls._from_reference(
                model, input_shape, example_inputs=example_inputs, weights=weights, task=task,
                trust_checkpoint=trust_checkpoint, work_dir=work_dir,
            )  # fmt: skip
        root = ingestion.work_directory(work_dir)
        from hamnet.models import HAMNet

        if not isinstance(model, HAMNet) and not isinstance(example_inputs, tuple):
            found = ingestion.ingest_user_module(
                model, root, input_shape=input_shape, example_inputs=example_inputs
            )
            # hamnet saved the module object itself (torch.save) in its work directory.
            return cls(found.path, "module", work_dir=root, trust_checkpoint=True,
                       family=found.family)  # fmt: skip
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
    def _from_reference(
        cls, model: str | Path, input_shape: Sequence[int] | None, *, example_inputs: Any,
        weights: str | Path | None, task: str, trust_checkpoint: bool,
        work_dir: str | Path | None,
    ) -> Optimizer:  # fmt: skip
        """A hamnet checkpoint path, or a module source (see :meth:`from_pytorch`)."""
        from hamnet.models.sources import is_hamnet_checkpoint, load_source, parse_model_ref

        text = str(model)
        path = Path(text).expanduser()
        named = text.startswith(("torchvision:", "timm:"))
        if not named and not path.exists():
            raise ModelLoadError(
                f"model {text!r} does not exist (expected a hamnet .pt checkpoint, a "
                f"whole-module .pt file, a Hugging Face model directory, or "
                f"'torchvision:NAME' / 'timm:NAME')"
            )
        if path.is_file() and path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, work_dir=work_dir)
        if path.is_file() and is_hamnet_checkpoint(path):
            found = ingestion.ingest_checkpoint(path, trust_checkpoint=trust_checkpoint)
            return cls(found.path, found.kind, work_dir=work_dir, trust_checkpoint=trust_checkpoint)
        source = parse_model_ref(
            text if named else str(path.resolve()),
            weights=str(Path(weights).expanduser().resolve()) if weights else None,
            task=task,  # type: ignore[arg-type]  # checked by ModuleSource
        )
        module = load_source(source, trust_checkpoint=trust_checkpoint)
        if example_inputs is None and input_shape is None:
            example_inputs = _source_example(source)
        root = ingestion.work_directory(work_dir)
        found = ingestion.ingest_user_module(
            module, root, input_shape=input_shape, example_inputs=example_inputs, source=source
        )
        return cls(found.path, "module", work_dir=root, trust_checkpoint=trust_checkpoint,
                   family=found.family)  # fmt: skip

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
        optimizer = cls(p, "onnx", work_dir=work_dir, family=family)
        optimizer._convert_to_torch()
        return optimizer

    def _convert_to_torch(self) -> None:
        """Convert the ONNX model to a torch module artifact with onnx2torch, for pruning
        and distillation; when it does not convert, record why (the plan says it)."""
        from hamnet.core.errors import DataError, MissingDependencyError
        from hamnet.models.sources import ModuleSource, load_source

        source = ModuleSource(kind="onnx", path=str(self.model_path))
        try:
            module = load_source(source)
            example = {name: _random_input(dims) for name, dims in self._input_dims.items()}
            if len(example) == 1:
                example = next(iter(example.values()))
            found = ingestion.ingest_user_module(
                module, self.work_dir, example_inputs=example, source=source
            )
        except (ModelLoadError, MissingDependencyError, DataError, ConfigError) as err:
            self.why_not_prunable = (
                f"the ONNX model did not convert to PyTorch with onnx2torch ({err}), so it "
                f"can be quantized but not pruned or distilled"
            )
            return
        self.module_path = found.path

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

    def output_kind(self) -> str | None:
        """What the model says its output is ("class_scores", "embedding"), if it says."""
        path = self.module_path or (self.model_path if self.kind == "module" else None)
        if path is None:
            return None
        from hamnet.models.sources import read_module_artifact

        return read_module_artifact(path).output_kind

    def model_size_mb(self) -> float:
        """Size of the source model in MB (a module's weights)."""
        if self.kind == "module":
            from hamnet.models.sources import module_weight_files

            return sum(p.stat().st_size for p in module_weight_files(self.model_path)) / 1e6
        return self.model_path.stat().st_size / 1e6

    def facts(self, *, prune: bool = False, train_path: Path | None = None) -> ModelFacts:
        """What the config compiler knows about this model.

        Args:
            prune: The configuration prunes or distills: an ONNX model that onnx2torch
                converted is then given as its torch module.
            train_path: The training data file, if the user gave training data.
        """
        size = self.model_size_mb()
        if prune and self.module_path is not None:
            return ModelFacts(
                self.module_path, self.adapter, size, self.trust_checkpoint,
                source_kind="module", train_path=train_path,
            )  # fmt: skip
        return ModelFacts(
            self.model_path, self.adapter, size, self.trust_checkpoint,
            source_kind=self.kind, train_path=train_path, why_not_prunable=self.why_not_prunable,
        )  # fmt: skip

    @property
    def prunable_kind(self) -> ModelKind:
        """How the model is loaded when it is pruned ("module" for a converted ONNX)."""
        return "module" if self.module_path is not None else self.kind

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
        train_path: str | Path | None = None,
        budget_minutes: float | None = None,
    ) -> OptimizeConfig:
        """Build the pipeline configuration for a goal (what :meth:`optimize` runs).

        See :func:`hamnet.api.compiler.compile_config` for the arguments;
        ``train_path`` is the training data file (``data.train_path``);
        ``budget_minutes`` the time budget AUTO's plan gives a student search.

        Raises:
            ConfigError: For an unknown goal or backend, or invalid settings.
            UnsupportedCombinationError: For pruning/distillation of a non-HAMNet.
        """
        from hamnet.core.hardware import load_profile

        goal = parse_goal(goal)
        constraints = constraints or Constraints()
        if goal is Goal.AUTO and plan is None:
            plan = self.plan(
                constraints, has_train_data=train_path is not None, budget_minutes=budget_minutes
            )
        prune = (
            goal in (Goal.PRUNE, Goal.DISTILL)
            or escalate
            or bool(plan and (plan.prune_ratios or plan.student_space == "multipliers"))
        )
        train = Path(train_path) if train_path is not None else None
        return compile_config(
            goal,
            constraints,
            self.facts(prune=prune, train_path=train),
            load_profile(constraints.target_hardware),
            preferred_backends=preferred_backends,
            data_path=data_path,
            seed=seed,
            track=track,
            plan=plan,
            escalate=escalate,
            overrides=overrides,
        )

    def plan(
        self,
        constraints: Constraints | None = None,
        *,
        has_train_data: bool = False,
        budget_minutes: float | None = None,
    ) -> AutoPlan:
        """The :attr:`Goal.AUTO` plan for this model (see :func:`plan_for`).

        Args:
            constraints: The user's constraints.
            has_train_data: Whether training data is given (a user's module is pruned
                and distilled only with it).
            budget_minutes: The time budget (default: ``constraints.budget_minutes``
                when the constraints carry one): with it, AUTO runs a student search
                within that budget.
        """
        from hamnet.core.hardware import load_profile

        constraints = constraints or Constraints()
        profile = load_profile(constraints.target_hardware)
        if budget_minutes is None:
            budget_minutes = getattr(constraints, "budget_minutes", None)
        return plan_for(
            constraints, self.prunable_kind, profile, model_size_mb=self.model_size_mb(),
            family=self.family, has_train_data=has_train_data,
            why_not_prunable=self.why_not_prunable, budget_minutes=budget_minutes,
            can_search_students=self.kind == "hamnet",
        )  # fmt: skip

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
        train_data: Any = None,
        validation_fn: ValidationFn | None = None,
        fidelity: str = "auto",
        preferred_backends: Sequence[str] | None = None,
        work_dir: str | Path | None = None,
        track: bool = False,
        seed: int = 0,
        max_rounds: int = 2,
        verbose: bool = False,
        use_prefect: bool = False,
        budget_minutes: float | None = None,
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
            train_data: Training data for pruning, distillation and fine-tuning:
                ``(x, y)`` with integer labels, or ``x`` alone (unlabelled: the original
                model labels it, by its predicted class when ``validation_data`` has
                labels, else by its outputs). With it, every row of
                ``validation_data`` selects (validation) or reports (test). Without
                it, AUTO runs only post-training methods on a user's module.
            fidelity: Without labels, how outputs are compared with the original
                model's: "agreement" (top-1 class), "cosine" (mean cosine similarity),
                or "auto": what the model declares (a Hugging Face encoder: embeddings,
                a classifier: class scores), else a rule on its outputs (see
                :func:`hamnet.evaluate.fidelity.fidelity_kind`).
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
            budget_minutes: AUTO only: a time budget (default: the constraints'
                ``budget_minutes`` when they carry one). With it AUTO also runs a
                student search (fresh HAMNet students distilled from the model, scored on
                validation accuracy and measured latency) for 60% of the budget and puts
                its students and their quantized children on the same Pareto front.
                Without it a student search runs only when quantization and pruning
                cannot reach the size bound, or in the escalation round.

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
        output_kind = self.output_kind()
        target = DataTarget(
            self.adapter, self.model_path, self.trust_checkpoint, self._input_dims, output_kind
        )
        data_path, accuracy_kind = prepare_data(target, validation_data, root, fidelity=fidelity)
        fidelity = declared_fidelity(fidelity, output_kind)
        train_path = None
        if train_data is not None:
            labelled = validation_data is None or validation_data[1] is not None
            train_path = prepare_train_data(target, train_data, root, labelled_eval=labelled)
        plan = (
            self.plan(
                constraints, has_train_data=train_path is not None, budget_minutes=budget_minutes
            )
            if goal is Goal.AUTO
            else None
        )

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
                overrides=deep_merge({"data": {"fidelity": fidelity}}, _overrides or {}),
                train_path=train_path,
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


def _random_input(dims: Sequence[int | None]) -> Any:
    """A float tensor of an ONNX input's dims (dynamic axes: 1)."""
    import torch

    return torch.randn(*[d if isinstance(d, int) and d > 0 else 1 for d in dims])


def _source_example(source: Any) -> Any:
    """Example inputs of a Hugging Face source (token ids and mask); None otherwise."""
    if source.kind != "huggingface":
        return None
    import torch

    ids = torch.ones(1, 16, dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


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
