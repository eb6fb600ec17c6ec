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

MODEL_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".onnx")
"""Suffixes of the model files the stage loads: hamnet checkpoints and ONNX files."""


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
        """
        path, family = LoadStage.model_family(ctx)
        family.check_data(path, ctx.dataset, trust_checkpoint=ctx.config.model.trust_checkpoint)
        return path, "torch" if family.loads_checkpoint else "onnx"

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
                f"model file {str(path)!r} has suffix {suffix!r}, but expected .pt, .pth or .onnx"
            )
        return path, detect_family(ModelSource(path=path))

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        path, fmt = self.check_model_file(ctx)
        ref = ctx.store.put(path, fmt)  # type: ignore[arg-type]
        return [
            Candidate.create(
                name="baseline",
                stage=self.name,
                method=fmt,
                artifact=ref,
                runtime="torch" if fmt == "torch" else "onnxruntime",
                params={"source_file": str(path)},
            )
        ]


PLUGIN = LoadStage
