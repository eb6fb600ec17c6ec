"""The ``load`` stage: a user's model file (``.pt`` checkpoint or ``.onnx``) as the baseline."""

from __future__ import annotations

from pathlib import Path

from hamnet.core.candidate import Candidate
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.core.registry import NoOptions
from hamnet.families._onnx import onnx_inputs
from hamnet.families.base import CHECKPOINT_SUFFIXES, ModelFamily, ModelSource, detect_family
from hamnet.pipeline.stages.base import Stage, StageContext

__all__ = ["LoadStage", "onnx_inputs"]

MODEL_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".onnx", ".json")
"""Suffixes of the model files the stage loads: hamnet checkpoints, ONNX files and module
artifacts (``module.json``, see :mod:`hamnet.models.sources`)."""


def is_module_source(ctx: StageContext) -> bool:
    """Whether ``model.path`` names a user's torch module source rather than a hamnet
    checkpoint, an ONNX file or a module artifact: ``torchvision:NAME``, ``timm:NAME``, a
    Hugging Face directory, or a ``.pt``/``.pth`` file that is not a hamnet checkpoint."""
    ref = ctx.config.model.path
    if not ref:
        return False
    if ref.startswith(("torchvision:", "timm:")):
        return True
    path = ctx.resolve(ref)
    if path.is_dir():
        return True
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from hamnet.models.sources import is_hamnet_checkpoint

        return not is_hamnet_checkpoint(path)
    return False


class LoadStage(Stage[NoOptions]):
    """Take a user's model file (hamnet ``.pt`` checkpoint or ``.onnx``) as the baseline.

    The file's model family (:func:`~hamnet.families.base.detect_family`) checks it
    against the data: a HAMNet checkpoint by its ``input_size``; an ONNX model, which
    may have several named inputs of any rank, by its inputs' names, ranks and static
    sizes (see :mod:`hamnet.training.data` for named inputs).
    """

    name = "load"
    order = 0
    baseline_source = "file"

    @staticmethod
    def check_model_file(ctx: StageContext) -> tuple[Path, str]:
        """Check the model file exists, has a known format and fits the data.

        Returns:
            The resolved path and its artifact format ("torch" or "onnx").

        Raises:
            ModelLoadError: If the file is missing, unreadable or of an unknown format.
            DataError: If its inputs (names, ranks, sizes) differ from the data's.
            ConfigError: If ``stages.export.trim_padding`` names a mask the data lacks.
        """
        LoadStage.check_trim_padding(ctx)
        if is_module_source(ctx):
            from hamnet.pipeline.stages._user_modules import check_model_ref

            return check_model_ref(ctx), "torch-module"
        path, family = LoadStage.model_family(ctx)
        family.check_data(path, ctx.dataset, trust_checkpoint=ctx.config.model.trust_checkpoint)
        if path.suffix.lower() == ".json":
            return path, "torch-module"
        return path, "torch" if family.loads_checkpoint else "onnx"

    @staticmethod
    def check_trim_padding(ctx: StageContext) -> None:
        """A mask named by ``stages.export.trim_padding`` must be a ``[batch, tokens]``
        input of the data (checked before any training, not at export)."""
        from hamnet.backends.inputs import unpack_inputs
        from hamnet.backends.padding import AUTO, resolve_mask
        from hamnet.core.errors import ExportError

        export = ctx.config.stages.export
        setting = export.trim_padding if export is not None else None
        if setting in (None, AUTO):
            return
        x = unpack_inputs(ctx.dataset.x_val[:1])
        named = dict(x) if isinstance(x, dict) else {"input": x}
        try:
            resolve_mask(setting, list(named), [v.shape for v in named.values()])
        except ExportError as err:
            raise ConfigError(f"stages.export.trim_padding: {err}") from err

    @staticmethod
    def model_family(ctx: StageContext) -> tuple[Path, type[ModelFamily]]:
        """The resolved ``model.path`` and the family that recognises it.

        Raises:
            ConfigError: If ``model.path`` is not set.
            ModelLoadError: If the file is missing or of an unknown format.
        """
        cfg = ctx.config.model
        if cfg.path is None:
            raise ConfigError("model.path must name a model file when model.source is 'file'")
        path = ctx.resolve(cfg.path)
        if not path.is_file():
            raise ModelLoadError(
                f"model file {str(path)!r} does not exist (model.path; expected a hamnet "
                f".pt checkpoint or an .onnx file)"
            )
        suffix = path.suffix.lower()
        if suffix not in MODEL_SUFFIXES:
            raise ModelLoadError(
                f"model file {str(path)!r} has suffix {suffix!r}, but expected .pt, .pth, "
                f".onnx, a module artifact .json, a Hugging Face model directory, or "
                f"'torchvision:NAME' / 'timm:NAME'"
            )
        return path, detect_family(ModelSource(path=path))

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        if is_module_source(ctx):
            from hamnet.pipeline.stages._user_modules import MODULE_FORMAT, ingest_model_ref

            path = ingest_model_ref(ctx)
            ref = ctx.store.put(path, MODULE_FORMAT)
            return [
                Candidate.create(
                    name="baseline", stage=self.name, method=MODULE_FORMAT, artifact=ref,
                    runtime="torch", params={"source": ctx.config.model.path},
                )
            ]  # fmt: skip
        path, fmt = self.check_model_file(ctx)
        ref = ctx.store.put(path, fmt)  # type: ignore[arg-type]
        return [
            Candidate.create(
                name="baseline",
                stage=self.name,
                method=fmt,
                artifact=ref,
                runtime="onnxruntime" if fmt == "onnx" else "torch",
                params={"source_file": str(path)},
            )
        ]


PLUGIN = LoadStage
