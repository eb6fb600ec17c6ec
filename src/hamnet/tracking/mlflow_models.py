"""Candidates as real MLflow models: a flavor, a signature, an input example.

Each candidate's model is logged as an MLflow *logged model* (MLflow 3), an output of
its candidate run, with an ``MLmodel`` file so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` take it:

* an ONNX file measured on ONNX Runtime is logged with the ``onnx`` flavor
  (``mlflow.onnx``), with the profile's execution providers;
* every other artifact (OpenVINO IR, an ONNX file measured on OpenVINO, torch
  checkpoints, module artifacts) is a ``python_function`` model logged from code
  (:mod:`hamnet.tracking.pyfunc_model`, which sets
  :class:`hamnet.tracking.pyfunc.HamnetRuntimeModel`): the files travel as artifacts
  and hamnet's own runtime runs them; nothing is pickled.

The signature is inferred from a few validation rows and what hamnet's runtime outputs
for them, so it declares the model's real input and output shapes and dtypes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.candidate import Candidate
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile, RuntimeSpec
    from hamnet.tracking.connection import Connection

logger = logging.getLogger("hamnet.tracking")

TAG_MODEL_ID = "hamnet.model_id"
"""Candidate-run tag: the id of the MLflow logged model made from the candidate."""

TAG_MODEL_URI = "hamnet.model_uri"
"""Candidate-run tag: ``models:/<model_id>``, what ``mlflow.pyfunc.load_model`` takes."""

MODEL_NAME = "model"
"""The name every candidate's logged model gets."""

EXAMPLE_ROWS = 2
"""Rows of the validation split kept as the input example."""

_EXTERNAL_DATA_BYTES = 1_500_000_000  # ONNX protobufs stop at 2 GB: larger weights go beside


@dataclass(frozen=True)
class ModelContext:
    """What logging a candidate's MLflow model needs besides the candidate.

    Attributes:
        example: A few input rows (one array, or named arrays), as the models take them.
        profile: The hardware profile the candidates were measured with: its runtime
            settings (providers, device, threads) go into the logged model.
        trust_checkpoint: Whether the run trusts pickled torch checkpoints (a module
            artifact with a pickled root needs it to load).
    """

    example: Any
    profile: HardwareProfile
    trust_checkpoint: bool = False

    @classmethod
    def from_inputs(
        cls, inputs: Any, profile: HardwareProfile, *, trust_checkpoint: bool = False
    ) -> ModelContext:
        """A context whose example is the first :data:`EXAMPLE_ROWS` rows of ``inputs``."""
        from hamnet.backends.inputs import pack_inputs, unpack_inputs

        example = unpack_inputs(pack_inputs(inputs)[:EXAMPLE_ROWS])
        return cls(example=example, profile=profile, trust_checkpoint=trust_checkpoint)

    def spec(self, runtime: str) -> RuntimeSpec:
        """The profile's settings for ``runtime``.

        Raises:
            ConfigError: The profile does not list the runtime.
        """
        spec = self.profile.runtime(runtime)
        if spec is None:
            raise ConfigError(
                f"runtime {runtime!r} must be listed by hardware profile "
                f"{self.profile.name!r} to log its model, but the profile lists "
                f"{self.profile.runtime_names}"
            )
        return spec


@dataclass(frozen=True)
class LoggedCandidateModel:
    """A candidate's logged MLflow model.

    Attributes:
        model_id: The MLflow logged model's id.
        flavor: ``"onnx"`` or ``"python_function"``.
    """

    model_id: str
    flavor: str

    @property
    def uri(self) -> str:
        """``models:/<model_id>``: what ``mlflow.pyfunc.load_model`` and the registry take."""
        return f"models:/{self.model_id}"


def model_flavor(candidate: Candidate) -> str:
    """The MLflow flavor a candidate's model is logged with.

    Returns:
        ``"onnx"`` for an ONNX file measured on ONNX Runtime, else ``"python_function"``
        (hamnet's runtime behind :class:`~hamnet.tracking.pyfunc.HamnetRuntimeModel`).
    """
    if candidate.artifact.format == "onnx" and candidate.runtime == "onnxruntime":
        return "onnx"
    return "python_function"


def log_candidate_model(
    connection: Connection, run_id: str, candidate: Candidate, context: ModelContext
) -> LoggedCandidateModel:
    """Log a candidate's model as an MLflow model, an output of its run ``run_id``.

    The run gets the tags :data:`TAG_MODEL_ID` and :data:`TAG_MODEL_URI`, and its
    step-0 metrics are linked to the model (MLflow's "Logged models" table shows them).

    Args:
        connection: The MLflow connection.
        run_id: The candidate's run.
        candidate: The measured candidate.
        context: The input example and runtime settings.

    Returns:
        The logged model.

    Raises:
        ModelLoadError: A model file is missing or does not load in its runtime.
        ConfigError: The profile does not list the candidate's runtime.
    """
    from mlflow.entities import LoggedModelOutput

    from hamnet.backends.session import get_runtime

    client = connection.client
    spec = context.spec(candidate.runtime)
    session = get_runtime(candidate.runtime).load(
        candidate.artifact,
        spec,
        context.profile.threads,
        trust_checkpoint=context.trust_checkpoint,
    )
    output = session.run(context.example)
    flavor = model_flavor(candidate)
    model = client.create_logged_model(
        connection.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags={
            "hamnet.candidate_id": candidate.id,
            "hamnet.candidate_name": candidate.name,
            "hamnet.runtime": candidate.runtime,
            "hamnet.format": candidate.artifact.format,
            "hamnet.precision": candidate.precision,
            "hamnet.artifact_sha256": candidate.artifact.sha256,
        },
        params={"stage": candidate.stage, "method": candidate.method},
        model_type=f"hamnet-{candidate.artifact.format}",
    )
    try:
        with tempfile.TemporaryDirectory(prefix="hamnet-mlflow-model-") as tmp:
            local = Path(tmp) / "model"
            _save(local, model, run_id, candidate, context, output, flavor)
            client.log_model_artifacts(model.model_id, str(local))
        client.finalize_logged_model(model.model_id, "READY")
    except Exception:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    _link_metrics(connection, run_id, model.model_id)
    logged = LoggedCandidateModel(model_id=model.model_id, flavor=flavor)
    connection.log(run_id, tags={TAG_MODEL_ID: logged.model_id, TAG_MODEL_URI: logged.uri})
    return logged


def _save(
    local: Path,
    model: Any,
    run_id: str,
    candidate: Candidate,
    context: ModelContext,
    output: Any,
    flavor: str,
) -> None:
    """Write the MLflow model folder of ``candidate`` to ``local``."""
    from mlflow.models import Model, infer_signature

    mlflow_model = Model(
        artifact_path=model.artifact_location,
        model_uuid=model.model_id,
        run_id=run_id,
        model_id=model.model_id,
        metadata={"hamnet_candidate_id": candidate.id, "hamnet_runtime": candidate.runtime},
    )
    signature = infer_signature(context.example, output)
    if flavor == "onnx":
        import mlflow.onnx
        import onnx
        import onnxruntime

        mlflow.onnx.save_model(
            onnx.load(candidate.artifact.path),
            str(local),
            mlflow_model=mlflow_model,
            signature=signature,
            input_example=context.example,
            pip_requirements=[
                f"onnx=={onnx.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
            ],
            onnx_execution_providers=context.spec("onnxruntime").providers
            or ["CPUExecutionProvider"],
            save_as_external_data=candidate.artifact.size_bytes > _EXTERNAL_DATA_BYTES,
        )
        return
    import mlflow.pyfunc

    from hamnet.tracking import pyfunc_model
    from hamnet.tracking.pyfunc import ARTIFACT_KEY

    files = Path(local.parent) / "files"
    input_names = list(context.example) if isinstance(context.example, dict) else None
    _copy_files(candidate, files, context, input_names)
    with warnings.catch_warnings():  # "add type hints to predict": the signature is given
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            str(local),
            mlflow_model=mlflow_model,
            python_model=str(Path(pyfunc_model.__file__)),
            artifacts={ARTIFACT_KEY: str(files)},
            signature=signature,
            input_example=context.example,
            pip_requirements=_pip_requirements(candidate.runtime),
        )


def _copy_files(
    candidate: Candidate, folder: Path, context: ModelContext, input_names: list[str] | None
) -> None:
    """Copy the artifact's files (relative to its main file's folder) and the descriptor."""
    import yaml

    from hamnet.core.errors import ModelLoadError
    from hamnet.tracking.pyfunc import DESCRIPTOR_FILE

    main = Path(candidate.artifact.path)
    for path in candidate.artifact.files:
        try:
            relative = path.relative_to(main.parent)
        except ValueError:
            raise ModelLoadError(
                f"the files of artifact {str(main)!r} must lie in its folder to be logged "
                f"as an MLflow model, but {str(path)!r} does not"
            ) from None
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    descriptor = {
        "main": main.name,
        "format": candidate.artifact.format,
        "sha256": candidate.artifact.sha256,
        "size_bytes": candidate.artifact.size_bytes,
        "runtime": candidate.runtime,
        "spec": context.spec(candidate.runtime).model_dump(mode="json"),
        "threads": context.profile.threads,
        "trust_checkpoint": context.trust_checkpoint,
        "input_names": input_names,
        "candidate_id": candidate.id,
    }
    text = yaml.safe_dump(descriptor, sort_keys=False)
    (folder / DESCRIPTOR_FILE).write_text(text, encoding="utf-8")


def _pip_requirements(runtime: str) -> list[str]:
    """hamnet and the runtime's library, pinned to the versions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    from hamnet.backends.session import runtime_class

    requirements = []
    for package in ("hamnet", runtime_class(runtime).package):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


def _link_metrics(connection: Connection, run_id: str, model_id: str) -> None:
    """Log the run's step-0 metrics again with ``model_id`` (the model's metrics in MLflow)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = connection.client.get_run(run_id).data.metrics
    linked = [
        Metric(key, value, now, 0, run_id=run_id, model_id=model_id)
        for key, value in metrics.items()
    ]
    if linked:
        connection.client.log_batch(run_id, metrics=linked)
