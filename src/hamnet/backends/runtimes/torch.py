"""PyTorch eager execution of a hamnet checkpoint (format ``"torch"``, a ``.pt`` file)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.inputs import Inputs, as_matrix, unpack_inputs
from hamnet.backends.runtimes.base import InferenceSession, Runtime
from hamnet.core.errors import DataError, HardwareProfileError, ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import RuntimeSpec


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
                    as_matrix(data)  # the 2-D error message
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
    """PyTorch eager execution of a hamnet checkpoint (format ``"torch"``) or of a user's
    module (format ``"torch-module"``, see :mod:`hamnet.models.sources`).

    ``torch.set_num_threads`` is process-wide: loading with ``threads`` changes it for
    every torch computation in this process.
    """

    name: ClassVar[str] = "torch"
    formats: ClassVar[tuple[str, ...]] = ("torch", "torch-module")
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "torch": (".pt",),
        "torch-module": (".json",),
    }
    package: ClassVar[str] = "torch"
    module: ClassVar[str] = "torch"

    @classmethod
    def artifact_files(cls, main: Path, fmt: str) -> list[Path]:
        """The files of an artifact: a checkpoint is one file; a module artifact is its
        JSON file plus the weights and pruning plan it names (see
        :mod:`hamnet.models.sources`)."""
        if fmt != "torch-module":
            return [main]
        from hamnet.models.sources import module_artifact_files

        return module_artifact_files(main)

    @classmethod
    def weight_files(cls, main: Path, fmt: str) -> list[Path]:
        """The files a model's size counts: a module artifact's weights (or its root)."""
        if fmt != "torch-module":
            return [main]
        from hamnet.models.sources import module_weight_files

        return module_weight_files(main)

    @classmethod
    def input_dims(cls, path: Path) -> list[int | None]:
        """Read ``[None, input_size]`` from a hamnet checkpoint's config, or the first
        input's dims (batch dynamic) from a module artifact.

        The feature count is None when the file holds no hamnet config.

        Raises:
            ModelLoadError: If the file is not a torch file that loads without running
                pickled code.
        """
        import torch

        if path.suffix.lower() == ".json":
            from hamnet.models.sources import read_module_artifact

            shapes = read_module_artifact(path).inputs.shapes()
            first = next(iter(shapes.values()))
            return [None, *first[1:]]
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelLoadError(
                f"checkpoint {str(path)!r} must be a torch file that loads with "
                f"weights_only=True, but loading it failed: {type(err).__name__}: {err}"
            ) from None
        config = payload.get("config") if isinstance(payload, Mapping) else None
        features = config.get("input_size") if isinstance(config, Mapping) else None
        return [None, features if isinstance(features, int) else None]

    @classmethod
    def weight_precision(cls, path: Path) -> str | None:
        """``"fp32"``: a hamnet checkpoint holds FP32 weights."""
        return "fp32"

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
        if artifact.format == "torch-module":
            from hamnet.models.sources import load_module_artifact

            return TorchSession(
                load_module_artifact(path, trust_checkpoint=trust_checkpoint), device
            )
        from hamnet.models import load_checkpoint

        model = load_checkpoint(path, trust=trust_checkpoint)
        return TorchSession(model, device)


PLUGIN = TorchRuntime
