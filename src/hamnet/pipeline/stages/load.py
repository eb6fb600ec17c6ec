"""The ``load`` stage: a user's model file (``.pt`` checkpoint or ``.onnx``) as the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hamnet.core.candidate import Candidate
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.core.registry import NoOptions
from hamnet.pipeline.stages.base import Stage, StageContext

if TYPE_CHECKING:
    from hamnet.training.data import Dataset


class LoadStage(Stage[NoOptions]):
    """Take a user's model file (hamnet ``.pt`` checkpoint or ``.onnx``) as the baseline.

    An ONNX model may have several named inputs of any rank; their names, ranks and
    static sizes must match the data's (see :mod:`hamnet.training.data` for named inputs).
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
        if suffix in (".pt", ".pth"):
            from hamnet.models import load_checkpoint

            got: int | None = load_checkpoint(path, trust=cfg.trust_checkpoint).config.input_size
            fmt = "torch"
        elif suffix == ".onnx":
            got = None
            _check_onnx_inputs(path, ctx.dataset)
            fmt = "onnx"
        else:
            raise ModelLoadError(
                f"model file {str(path)!r} has suffix {suffix!r}, but expected .pt, .pth or .onnx"
            )
        if got is not None:
            ctx.dataset.check_input_size(got)
        return path, fmt

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


def onnx_inputs(path: Path) -> dict[str, list[int | None]]:
    """The graph inputs of an ONNX file: ``{name: dims}`` (None for a dynamic axis).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model or has no input.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ModelLoadError(
            f"model file {str(path)!r} is not a readable ONNX model: {err}"
        ) from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = {
        str(i.name): [d.dim_value or None for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in initializers
    }
    if not inputs:
        raise ModelLoadError(f"ONNX model {str(path)!r} must have at least one input, but has none")
    return inputs


def _check_onnx_inputs(path: Path, dataset: Dataset) -> None:
    """Check an ONNX model's inputs against the data's (names, ranks, static sizes)."""
    import numpy as np

    from hamnet.core.errors import DataError

    inputs = onnx_inputs(path)
    x = dataset.x_test
    if dataset.input_names is not None:
        if sorted(inputs) != sorted(dataset.input_names):
            raise DataError(
                f"the data's named inputs must match the inputs of ONNX model {str(path)!r} "
                f"{sorted(inputs)}, but got {sorted(dataset.input_names)}"
            )
        shapes = {n: (len(x), *x.dtype[n].shape) for n in dataset.input_names}
    else:
        if len(inputs) != 1:
            raise DataError(
                f"data with one input array must match an ONNX model with one input, but "
                f"{str(path)!r} has inputs {sorted(inputs)}: store named inputs as "
                f"'x__<name>' arrays"
            )
        shapes = {next(iter(inputs)): tuple(np.shape(x))}
    for name, dims in inputs.items():
        shape = shapes[name]
        if len(dims) != len(shape):
            raise DataError(
                f"input {name!r} of ONNX model {str(path)!r} must be {len(dims)}-D "
                f"{['?' if d is None else d for d in dims]}, but the data has shape "
                f"{['N', *shape[1:]]}"
            )
        if len(dims) == 2 and dataset.input_names is None and dims[1] is not None:
            dataset.check_input_size(int(dims[1]))
        for axis, (want, got) in enumerate(zip(dims, shape, strict=True)):
            if axis > 0 and want is not None and want != got:
                raise DataError(
                    f"input {name!r} of ONNX model {str(path)!r} must have size {want} on "
                    f"axis {axis}, but the data has {got}"
                )


PLUGIN = LoadStage
