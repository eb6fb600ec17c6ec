"""The MLflow ``python_function`` model that runs a hamnet artifact on hamnet's runtime.

OpenVINO IR, torch checkpoints and module artifacts have no MLflow flavor that runs them
the way hamnet measured them; :class:`HamnetRuntimeModel` does: its artifacts are the
model's files and a descriptor (:data:`DESCRIPTOR_FILE`) naming the main file, the
format, the runtime and the runtime's settings from the hardware profile, and
:meth:`~HamnetRuntimeModel.predict` is :meth:`hamnet.backends.session.InferenceSession.run`.

The model is logged "from code": its ``python_model`` is the file
:mod:`hamnet.tracking.pyfunc_model` (three lines that import this class and call
``mlflow.models.set_model``), so nothing is pickled and a process that loads the model
needs hamnet installed (it imports this module). This module imports MLflow when
imported: import it only where MLflow is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.pyfunc import PythonModel

DESCRIPTOR_FILE = "hamnet_model.yaml"
"""The descriptor beside the model's files in the ``model`` artifact folder (YAML, so no
``.json`` file sits beside a module artifact's ``module.json``)."""

ARTIFACT_KEY = "model"
"""The key of the model's folder in the pyfunc model's ``artifacts``."""


def _as_runtime_input(value: Any) -> Any:
    """A numpy array as the runtimes take it: float64 (JSON decoding's default) as float32."""
    array = np.asarray(value)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


class HamnetRuntimeModel(PythonModel):  # type: ignore[misc]
    """Runs a hamnet model file on the hamnet runtime it was measured on.

    Loading reads the descriptor, builds the artifact reference and loads the session
    with the runtime settings hamnet measured with; predicting returns the model's first
    output as float32, exactly what :meth:`InferenceSession.run` returns.
    """

    _skip_type_hint_validation = True
    """MLflow validates inputs against the signature logged with the model, not against
    ``predict``'s type hints (read by ``PythonModel.__init_subclass__`` unless this is set)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._input_names: list[str] | None = None

    def load_context(self, context: Any) -> None:
        """Load the model's session from the ``model`` artifact folder.

        Raises:
            ModelLoadError: The descriptor or a model file is missing or unreadable.
        """
        from hamnet.backends.session import get_runtime
        from hamnet.core.artifacts import ArtifactRef
        from hamnet.core.errors import ModelLoadError
        from hamnet.core.hardware import RuntimeSpec

        folder = Path(context.artifacts[ARTIFACT_KEY])
        descriptor_path = folder / DESCRIPTOR_FILE
        try:
            descriptor = yaml.safe_load(descriptor_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ModelLoadError(
                f"a hamnet MLflow model must hold {DESCRIPTOR_FILE} in its {ARTIFACT_KEY!r} "
                f"artifacts, but reading {str(descriptor_path)!r} failed: {err}"
            ) from None
        artifact = ArtifactRef(
            path=str(folder / descriptor["main"]),
            sha256=descriptor["sha256"],
            format=descriptor["format"],
            size_bytes=int(descriptor["size_bytes"]),
        )
        runtime = get_runtime(descriptor["runtime"])
        self._session = runtime.load(
            artifact,
            RuntimeSpec.model_validate(descriptor["spec"]),
            descriptor.get("threads"),
            trust_checkpoint=bool(descriptor.get("trust_checkpoint", False)),
        )
        self._input_names = descriptor.get("input_names")

    # No type hints on purpose: MLflow reads the hints of ``predict`` as the model's
    # schema; the signature logged with the model is the schema instead.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Run the model on a batch: one array, named arrays, or a DataFrame.

        A DataFrame is one array (its values) for a single-input model, and one column per
        input for a model with named inputs.

        Returns:
            The model's first output, float32 ``[batch, ...]``.
        """
        if self._session is None:
            raise RuntimeError("HamnetRuntimeModel.predict called before load_context")
        return self._session.run(self._inputs(model_input))

    def _inputs(self, model_input: Any) -> Any:
        if isinstance(model_input, Mapping):
            return {str(k): _as_runtime_input(v) for k, v in model_input.items()}
        columns = getattr(model_input, "columns", None)
        if columns is not None:  # a pandas DataFrame
            if self._input_names:
                return {
                    name: _as_runtime_input(np.stack(list(model_input[name].to_numpy())))
                    for name in self._input_names
                }
            return _as_runtime_input(model_input.to_numpy())
        return _as_runtime_input(model_input)
