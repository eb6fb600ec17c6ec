"""The user's own model, in any form, as a torch module; and the module artifact.

A :class:`ModuleSource` says how to rebuild the user's root module (JSON, so it rides on
candidates and configs):

- ``"pickle"``: a whole-module file from ``torch.save(model)``. Loading it runs code
  pickled in the file, so it needs ``trust_checkpoint=True``.
- ``"torchvision"`` / ``"timm"``: an architecture name, its keyword arguments (such as
  ``num_classes``) and a local ``state_dict`` file, read with ``weights_only=True`` or
  safetensors.
- ``"huggingface"``: a local directory (``config.json`` + weights; a sentence-transformers
  directory too). Remote code is never run. ``task="embedding"`` wraps ``AutoModel`` in
  mean pooling (:class:`~hamnet.models.hf_modules.MeanPoolingEncoder`),
  ``"classification"`` returns a sequence classifier's logits.
- ``"onnx"``: an ONNX file converted to a torch module with onnx2torch.

:func:`load_source` builds the module (eval mode, CPU). :func:`parse_model_ref` reads
the short forms the CLI and configs take (``torchvision:resnet18``, a directory, a
``.onnx`` or ``.pt`` file).

A **module artifact** is a folder whose main file ``module.json`` names the source, the
example input spec (:class:`InputSpec`), what the output means, and optionally a
pruning plan (``plan.json``, a :class:`hamnet.models.replay.ModulePlan`) and the
module's weights (``weights.safetensors``). Loading it rebuilds the root from its
source, replays the plan, then loads the weights (safetensors: no pickled code)::

    save_module_artifact(out, source=source, inputs=spec, module=pruned, plan=plan)
    child = load_module_artifact(out / "module.json")
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import keyword
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from hamnet.core.artifacts import atomic_write_text, atomic_writer
from hamnet.core.errors import ConfigError, MissingDependencyError, ModelLoadError
from hamnet.core.registry import did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MODULE_ARTIFACT_FORMAT",
    "MODULE_FILE",
    "PLAN_FILE",
    "ROOT_PICKLE",
    "WEIGHTS_FILE",
    "InputSpec",
    "ModuleArtifact",
    "ModuleSource",
    "TensorSpec",
    "example_inputs",
    "hf_input_spec",
    "hf_task",
    "is_hamnet_checkpoint",
    "load_module_artifact",
    "load_source",
    "module_artifact_files",
    "onnx_input_spec",
    "parse_model_ref",
    "read_module_artifact",
    "save_module_artifact",
]

SourceKind = Literal["pickle", "torchvision", "timm", "huggingface", "onnx"]
HFTask = Literal["auto", "embedding", "classification"]
OutputKind = Literal["class_scores", "embedding"]
DType = Literal[
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"
]

MODULE_ARTIFACT_FORMAT: Literal["hamnet-module/1"] = "hamnet-module/1"
"""The ``format`` written in every ``module.json``."""
MODULE_FILE = "module.json"
"""The main file of a module artifact."""
PLAN_FILE = "plan.json"
"""The pruning plan beside ``module.json`` (a ``ModulePlan``)."""
WEIGHTS_FILE = "weights.safetensors"
"""The module's ``state_dict`` beside ``module.json``."""
ROOT_PICKLE = "root.pt"
"""A whole-module pickle kept inside the artifact (``"pickle"`` sources)."""

_FILE_KINDS: tuple[SourceKind, ...] = ("pickle", "huggingface", "onnx")
_ARCH_KINDS: tuple[SourceKind, ...] = ("torchvision", "timm")
_CHECKPOINT_SUFFIXES = (".pt", ".pth")
_REF_FORMS = (
    "'torchvision:NAME' or 'timm:NAME' (with --weights FILE), a Hugging Face model "
    "directory, an .onnx file, or a .pt/.pth file saved with torch.save(model)"
)
_TRUST_HINT = (
    "set trust_checkpoint=True (the --trust-checkpoint flag of the CLI, "
    "model.trust_checkpoint: true in a config) only for files you made yourself or trust"
)


# ---------------------------------------------------------------------------- sources


class ModuleSource(BaseModel):
    """How to rebuild the user's root module.

    Attributes:
        kind: ``"pickle"``, ``"torchvision"``, ``"timm"``, ``"huggingface"`` or ``"onnx"``.
        path: The file or directory (``pickle``, ``huggingface``, ``onnx``); a relative
            path is read against the ``base_dir`` given to :func:`load_source`.
        name: The architecture (``torchvision``, ``timm``), e.g. ``"resnet18"``.
        kwargs: Keyword arguments of the architecture, e.g. ``{"num_classes": 10}``.
        weights: The ``state_dict`` file of the architecture (``.pt``/``.pth`` saved with
            ``torch.save(model.state_dict())``, or ``.safetensors``); None: initial weights.
        task: What a Hugging Face model is used for: ``"embedding"``,
            ``"classification"`` or ``"auto"`` (see :func:`hf_task`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind
    path: str | None = None
    name: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    task: HFTask = "auto"

    @model_validator(mode="after")
    def _check_fields(self) -> ModuleSource:
        if self.kind in _FILE_KINDS:
            if not self.path:
                raise ValueError(f"a {self.kind!r} source needs path, but got path={self.path!r}")
            extra = {k: v for k, v in (("name", self.name), ("weights", self.weights)) if v}
            if extra or self.kwargs:
                raise ValueError(
                    f"a {self.kind!r} source takes only path (and task), but got "
                    f"{ {**extra, **({'kwargs': self.kwargs} if self.kwargs else {})} }"
                )
        else:
            if not self.name:
                raise ValueError(
                    f"a {self.kind!r} source needs name (e.g. 'resnet18'), but got {self.name!r}"
                )
            if self.path:
                raise ValueError(
                    f"a {self.kind!r} source takes its weights file as weights, not path, "
                    f"but got path={self.path!r}"
                )
        if self.task != "auto" and self.kind != "huggingface":
            raise ValueError(
                f"task applies to 'huggingface' sources, but got task={self.task!r} for a "
                f"{self.kind!r} source"
            )
        try:
            json.dumps(self.kwargs)
        except TypeError as err:
            raise ValueError(
                f"kwargs must be JSON values, but got {self.kwargs!r}: {err}"
            ) from None
        return self

    def resolved(self, base_dir: str | Path) -> ModuleSource:
        """This source with relative ``path``/``weights`` made absolute against ``base_dir``."""
        base = Path(base_dir).expanduser()
        update: dict[str, str] = {}
        for field in ("path", "weights"):
            value = getattr(self, field)
            if value and not Path(value).expanduser().is_absolute():
                update[field] = str((base / value).resolve())
            elif value:
                update[field] = str(Path(value).expanduser())
        return self.model_copy(update=update)

    def describe(self) -> str:
        """One line naming the source, for messages and logs."""
        if self.kind in _ARCH_KINDS:
            return f"{self.kind}:{self.name}" + (f" ({self.weights})" if self.weights else "")
        return f"{self.kind} {self.path}" + (
            f" (task {self.task})" if self.kind == "huggingface" else ""
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _module_found(name: str) -> bool:
    """True when ``name`` is importable as far as the import system can tell without importing."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_package(package: str, what: str) -> Any:
    """Import ``package`` or raise a MissingDependencyError naming it."""
    if not _module_found(package):
        raise MissingDependencyError(
            f"{what} needs the {package} package, but it is not installed: pip install {package}"
        )
    try:
        return importlib.import_module(package)
    except Exception as err:  # a broken build (e.g. a CUDA wheel beside a CPU torch)
        raise MissingDependencyError(
            f"{what} needs the {package} package, which is installed but does not import: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None


def is_hamnet_checkpoint(path: str | Path) -> bool:
    """Tell whether ``path`` is one of hamnet's own HAMNet checkpoints.

    HAMNet checkpoints (``hamnet.models.save_checkpoint``) are not module sources: callers
    route them to the HAMNet family as before. The file is read with
    ``weights_only=True`` (and memory-mapped), so no pickled code runs.

    Args:
        path: Any path.

    Returns:
        True for a readable ``.pt``/``.pth`` file holding hamnet's checkpoint keys.
    """
    import torch

    from hamnet.models.hamnet import CHECKPOINT_FORMAT

    p = Path(path).expanduser()
    if not p.is_file() or p.suffix.lower() not in _CHECKPOINT_SUFFIXES:
        return False
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT


def _unsafe_globals(path: Path) -> list[str] | None:
    """The classes/functions a torch file pickles (None when the file cannot be read so)."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return None


def parse_model_ref(
    ref: str,
    *,
    weights: str | Path | None = None,
    task: HFTask = "auto",
    num_classes: int | None = None,
) -> ModuleSource:
    """Read a model reference as the CLI and configs write it.

    Args:
        ref: ``"torchvision:NAME"``, ``"timm:NAME"``, a Hugging Face model directory, an
            ``.onnx`` file, or a ``.pt``/``.pth`` file saved with ``torch.save(model)``.
        weights: The ``state_dict`` file of a ``torchvision:``/``timm:`` architecture.
        task: For a Hugging Face directory: ``"embedding"``, ``"classification"`` or
            ``"auto"``.
        num_classes: For a ``torchvision:``/``timm:`` architecture, its output size
            (ignored for the other forms, whose files fix it).

    Returns:
        The source (nothing is loaded and no pickled code runs).

    Raises:
        ConfigError: An unrecognized form, ``weights`` or ``task`` where they do not apply,
            a hamnet checkpoint (route it as a HAMNet), or a bare ``state_dict`` file (it
            needs an architecture).
        ModelLoadError: A file or directory that does not exist.
    """
    ref = str(ref).strip()
    prefix, sep, rest = ref.partition(":")
    if sep and prefix in _ARCH_KINDS:
        if not rest:
            raise ConfigError(f"model reference {ref!r} must name an architecture after {prefix}:")
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
        if task != "auto":
            raise ConfigError(
                f"task applies to Hugging Face directories, but got task={task!r} for {ref!r}"
            )
        return ModuleSource(
            kind=prefix,  # type: ignore[arg-type]
            name=rest,
            kwargs=kwargs,
            weights=None if weights is None else str(Path(weights).expanduser()),
        )
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model {ref!r} must be {_REF_FORMS}, but no such file or directory")
    if weights is not None:
        raise ConfigError(
            f"weights applies to 'torchvision:NAME' and 'timm:NAME', but got "
            f"weights={str(weights)!r} for {ref!r}"
        )
    if path.is_dir():
        _hf_model_dir(path)  # raises when the directory is no Hugging Face model
        return ModuleSource(kind="huggingface", path=str(path), task=task)
    if task != "auto":
        raise ConfigError(
            f"task applies to Hugging Face directories, but got task={task!r} for {ref!r}"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ModuleSource(kind="onnx", path=str(path))
    if suffix in _CHECKPOINT_SUFFIXES:
        if is_hamnet_checkpoint(path):
            raise ConfigError(
                f"{ref!r} is a hamnet checkpoint, not a module source: load it as a HAMNet "
                f"(hamnet.models.load_checkpoint)"
            )
        unsafe = _unsafe_globals(path)
        if unsafe == []:
            raise ConfigError(
                f"{ref!r} holds weights only (a state_dict), so it needs an architecture: "
                f"pass 'torchvision:NAME --weights {ref}' or 'timm:NAME --weights {ref}', or "
                f"save the whole module with torch.save(model)"
            )
        return ModuleSource(kind="pickle", path=str(path))
    raise ConfigError(f"model reference must be {_REF_FORMS}, but got {ref!r}")


def load_source(
    source: ModuleSource,
    *,
    base_dir: str | Path = ".",
    trust_checkpoint: bool = False,
    with_weights: bool = True,
) -> nn.Module:
    """Build the user's root module from its source.

    Args:
        source: The source.
        base_dir: Folder that relative paths of the source are read against.
        trust_checkpoint: Allow a ``"pickle"`` source, whose loading runs pickled code.
        with_weights: Load the source's own weights. False builds the architecture only
            (torchvision/timm without their weights file, Hugging Face from its config),
            for a caller that loads other weights next.

    Returns:
        The module, in eval mode, on the CPU.

    Raises:
        ModelLoadError: A missing or unreadable file, a pickle without
            ``trust_checkpoint``, weights that do not fit, remote code, an ONNX operator
            onnx2torch cannot convert.
        ConfigError: An unknown architecture name.
        MissingDependencyError: torchvision, timm, transformers or onnx2torch missing.
    """
    src = source.resolved(base_dir)
    if src.kind == "pickle":
        module = _load_pickle(Path(str(src.path)), trust_checkpoint)
    elif src.kind in _ARCH_KINDS:
        module = _load_architecture(src, with_weights)
    elif src.kind == "huggingface":
        module = _load_huggingface(Path(str(src.path)), src.task, with_weights)
    else:
        module = _load_onnx(Path(str(src.path)))
    return module.cpu().eval()


def _load_pickle(path: Path, trust: bool) -> nn.Module:
    import torch
    from torch import nn

    if not path.is_file():
        raise ModelLoadError(
            f"module file {str(path)!r} does not exist (expected a file saved with "
            f"torch.save(model))"
        )
    if not trust:
        unsafe = _unsafe_globals(path)
        if unsafe is None:
            raise ModelLoadError(
                f"{str(path)!r} is not a readable torch file (truncated or not saved with "
                f"torch.save): expected a whole module saved with torch.save(model) or a "
                f"hamnet checkpoint"
            )
        if unsafe == []:
            raise ModelLoadError(
                f"{str(path)!r} holds weights only (no module), but a 'pickle' source must be "
                f"a whole module saved with torch.save(model); for a state_dict use "
                f"'torchvision:NAME --weights FILE' or 'timm:NAME --weights FILE'"
            )
        shown = f" (it pickles {', '.join(unsafe[:3])})" if unsafe else ""
        raise ModelLoadError(
            f"{str(path)!r} pickles Python code{shown} (a whole module, or a checkpoint "
            f"holding objects): loading it runs that code, so it needs "
            f"trust_checkpoint=True, but got trust_checkpoint=False; {_TRUST_HINT}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ModelLoadError(
            f"{str(path)!r} pickles a class that cannot be imported here ({_first_line(err)}): "
            f"put the code that defines the module on PYTHONPATH"
        ) from None
    except Exception as err:
        raise ModelLoadError(
            f"{str(path)!r} must be a file saved with torch.save(model), but reading it "
            f"failed: {type(err).__name__}: {_first_line(err)}"
        ) from None
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"{str(path)!r} must hold a torch.nn.Module (torch.save(model)), but holds a "
            f"{type(obj).__name__}"
            + (
                "; a state_dict needs an architecture: 'torchvision:NAME --weights FILE'"
                if isinstance(obj, Mapping)
                else ""
            )
        )
    return obj


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a weights-only torch file."""
    import torch

    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist (expected a state_dict)")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:
            raise ModelLoadError(
                f"weights file {str(path)!r} must be a safetensors file, but reading it failed: "
                f"{_first_line(err)}"
            ) from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"weights file {str(path)!r} must be a state_dict saved with "
            f"torch.save(model.state_dict()) (read with weights_only=True, no pickled code), "
            f"but reading it failed: {type(err).__name__}: {_first_line(err)}"
        ) from None
    if isinstance(payload, Mapping) and not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = payload.get(key)
            if isinstance(inner, Mapping):
                payload = inner
                break
    if not isinstance(payload, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ModelLoadError(
            f"weights file {str(path)!r} must hold a state_dict (names -> tensors), but holds "
            f"a {type(payload).__name__}"
            + (
                f" with keys {sorted(map(str, payload))[:8]}"
                if isinstance(payload, Mapping)
                else ""
            )
        )
    state = {str(k): v for k, v in payload.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_state_into(module: nn.Module, state: Mapping[str, Any], where: str) -> None:
    try:
        result = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:
        raise ModelLoadError(
            f"weights {where} must fit the module, but they do not: {_first_line(err)}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"weights {where} must match the module's parameters, but "
            f"{len(result.missing_keys)} are missing (e.g. {result.missing_keys[:3]}) and "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )


def _load_architecture(source: ModuleSource, with_weights: bool) -> nn.Module:
    name = str(source.name)
    package = _import_package(source.kind, f"a {source.kind}:{name} model")
    if source.kind == "torchvision":
        known = list(package.models.list_models())
        build = package.models.get_model
        options: dict[str, Any] = {"weights": None}
    else:
        known = list(package.list_models())
        build = package.create_model
        options = {"pretrained": False}
    if name not in known:
        raise ConfigError(
            f"{source.kind} model name must be one of the {len(known)} names "
            f"{source.kind} lists, but got {name!r}{did_you_mean(name, known)}"
        )
    try:
        module = build(name, **options, **source.kwargs)
    except TypeError as err:
        raise ConfigError(
            f"{source.kind}:{name} must accept kwargs {source.kwargs}, but it does not: "
            f"{_first_line(err)}"
        ) from None
    if with_weights and source.weights:
        _load_state_into(
            module, _read_state_dict(Path(source.weights)), f"{source.weights!r} of {name}"
        )
    return module  # type: ignore[no-any-return]


# ----------------------------------------------------------------------- Hugging Face


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{str(path)!r} must be a JSON file, but: {_first_line(err)}"
        ) from None


def _sentence_modules(directory: Path) -> list[dict[str, Any]]:
    """The modules a sentence-transformers directory lists (empty when it lists none)."""
    listing = directory / "modules.json"
    if not listing.is_file():
        return []
    modules = _read_json(listing)
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def _hf_model_dir(directory: Path) -> Path:
    """The folder with ``config.json``: ``directory`` or its sentence-transformers Transformer."""
    if not directory.is_dir():
        raise ModelLoadError(
            f"Hugging Face model {str(directory)!r} must be a directory, but it does not exist"
        )
    if (directory / "config.json").is_file():
        return directory
    for module in _sentence_modules(directory):
        if str(module.get("type", "")).endswith(".Transformer"):
            inner = directory / str(module.get("path", ""))
            if (inner / "config.json").is_file():
                return inner
    raise ModelLoadError(
        f"Hugging Face model directory {str(directory)!r} must hold config.json (from "
        f"save_pretrained), but has {sorted(p.name for p in directory.iterdir())[:10]}"
    )


def _hf_config(model_dir: Path) -> dict[str, Any]:
    """``config.json``, refused when loading it would need remote code."""
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{str(model_dir / 'config.json')!r} must hold a JSON object")
    if "auto_map" in config:
        raise ModelLoadError(
            f"Hugging Face model {str(model_dir)!r} needs remote code (config.json has auto_map "
            f"{sorted(config['auto_map'])}), which hamnet never runs: use a model whose "
            f"architecture ships with transformers"
        )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(
            f"Hugging Face model {str(model_dir)!r} has model_type {model_type!r}, which "
            f"transformers does not ship, so it needs remote code, which hamnet never runs"
            f"{did_you_mean(model_type, CONFIG_MAPPING_NAMES)}"
        )
    return config


def hf_task(directory: str | Path) -> Literal["embedding", "classification"]:
    """Tell what a Hugging Face directory's model is for.

    Returns:
        ``"classification"`` when ``config.json``'s ``architectures`` names a
        ``*ForSequenceClassification`` model, else ``"embedding"``.
    """
    config = _read_json(_hf_model_dir(Path(directory).expanduser()) / "config.json")
    architectures = (config.get("architectures") or []) if isinstance(config, dict) else []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    return "embedding"


def _pooling_normalize(directory: Path) -> bool:
    """Whether a sentence-transformers directory normalizes; refuse pooling other than mean."""
    normalize = False
    for module in _sentence_modules(directory):
        kind = str(module.get("type", ""))
        if kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Pooling"):
            config_file = directory / str(module.get("path", "")) / "config.json"
            pooling = _read_json(config_file) if config_file.is_file() else {}
            modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
            if modes and modes != ["pooling_mode_mean_tokens"]:
                raise ModelLoadError(
                    f"sentence encoder {str(directory)!r} must pool by mean "
                    f"(pooling_mode_mean_tokens), the pooling hamnet's MeanPoolingEncoder "
                    f"does, but its Pooling module sets {modes}"
                )
    return normalize


def _load_huggingface(directory: Path, task: HFTask, with_weights: bool) -> nn.Module:
    from hamnet.models.hf_modules import MeanPoolingEncoder, SequenceClassifier

    transformers = _import_package("transformers", "a Hugging Face model")
    model_dir = _hf_model_dir(directory)
    config = _hf_config(model_dir)
    resolved = hf_task(directory) if task == "auto" else task
    architectures = config.get("architectures") or []
    if (
        resolved == "classification"
        and architectures
        and not any(str(a).endswith("ForSequenceClassification") for a in architectures)
    ):
        raise ModelLoadError(
            f"task 'classification' needs a trained classification head, i.e. config.json "
            f"architectures naming a *ForSequenceClassification model, but "
            f"{str(model_dir)!r} has {architectures}"
        )
    normalize = _pooling_normalize(directory) if resolved == "embedding" else False
    auto = (
        transformers.AutoModelForSequenceClassification
        if resolved == "classification"
        else transformers.AutoModel
    )
    try:
        if with_weights:
            model = auto.from_pretrained(
                str(model_dir),
                attn_implementation="eager",
                local_files_only=True,
                trust_remote_code=False,
            )
        else:
            hf_config = transformers.AutoConfig.from_pretrained(
                str(model_dir), local_files_only=True, trust_remote_code=False
            )
            model = auto.from_config(hf_config, attn_implementation="eager")
    except Exception as err:
        raise ModelLoadError(
            f"Hugging Face model {str(model_dir)!r} must load with transformers "
            f"({auto.__name__}, local files only), but: {type(err).__name__}: {_first_line(err)}"
        ) from None
    model.eval()
    if resolved == "classification":
        return SequenceClassifier(model)
    return MeanPoolingEncoder(model, normalize=normalize)


def hf_input_spec(directory: str | Path, *, max_length: int = 128) -> InputSpec:
    """The named int64 inputs ``[1, max_length]`` of a Hugging Face directory's model.

    ``input_ids`` and ``attention_mask``, plus ``token_type_ids`` when the config has
    token types (``type_vocab_size``).
    """
    config = _hf_config(_hf_model_dir(Path(directory).expanduser()))
    names = ["input_ids", "attention_mask"]
    if int(config.get("type_vocab_size") or 0) > 0:
        names.append("token_type_ids")
    return InputSpec({n: TensorSpec(shape=[1, max_length], dtype="int64") for n in names})


# ----------------------------------------------------------------------------- ONNX

_TORCHVISION_OPS = ("NonMaxSuppression", "RoiAlign")
"""ONNX operators whose onnx2torch converters call torchvision."""


def _needs_torchvision(*_: Any, **__: Any) -> Any:
    raise MissingDependencyError(
        f"converting ONNX operators {list(_TORCHVISION_OPS)} needs torchvision, which is "
        f"not installed"
    )


@contextlib.contextmanager
def _torchvision_absent() -> Iterator[None]:
    """Let onnx2torch import without torchvision.

    onnx2torch imports torchvision at import time for two converters only
    (NonMaxSuppression, RoiAlign). While it imports, ``torchvision`` names a module
    whose functions raise MissingDependencyError; the name is removed afterwards, so
    the rest of the process still sees torchvision missing. Graphs with those two
    operators are refused before conversion (see :func:`_unsupported_onnx_ops`).
    """
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for fn in ("nms", "box_convert", "roi_align"):
        setattr(ops, fn, _needs_torchvision)
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        yield
    finally:
        for name, placeholder in (("torchvision", tv), ("torchvision.ops", ops)):
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]


def _import_onnx2torch() -> Any:
    what = "converting an ONNX model to a torch module (to prune or distill it)"
    if not _module_found("onnx2torch"):
        raise MissingDependencyError(
            f"{what} needs onnx2torch, which is not installed: pip install 'hamnet[onnx2torch]' "
            f"(without it the ONNX model can still be quantized)"
        )
    if "onnx2torch" in sys.modules or _module_found("torchvision"):
        return _import_package("onnx2torch", what)
    with _torchvision_absent():
        return _import_package("onnx2torch", what)


def _unsupported_onnx_ops(model: Any) -> list[str]:
    """``domain::op (opset N)`` of every top-level operator onnx2torch cannot convert."""
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain or "": int(o.version) for o in model.opset_import}
    opsets.setdefault("ai.onnx", opsets.get("", 0))
    torchvision_missing = not _module_found("torchvision")
    unsupported: dict[str, None] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        label = f"{domain + '::' if domain else ''}{node.op_type}"
        version = opsets.get(domain)
        if version is None:
            unsupported[f"{label} (domain not imported)"] = None
            continue
        if torchvision_missing and not domain and node.op_type in _TORCHVISION_OPS:
            unsupported[f"{label} (opset {version}, needs torchvision)"] = None
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            unsupported[f"{label} (opset {version})"] = None
    return list(unsupported)


def _load_onnx(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {str(path)!r} does not exist")
    onnx2torch = _import_onnx2torch()
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ModelLoadError(
            f"{str(path)!r} must be an ONNX file, but reading it failed: {_first_line(err)}"
        ) from None
    unsupported = _unsupported_onnx_ops(model)
    if unsupported:
        raise ModelLoadError(
            f"ONNX model {str(path)!r} must use operators onnx2torch converts to torch, but "
            f"it uses {unsupported}: the model can still be quantized from its ONNX file, but "
            f"not pruned or distilled, which need a torch module (give the model's own source "
            f"instead: a Hugging Face directory, torchvision:/timm: NAME, or torch.save(model))"
        )
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    keep_names = all(n.isidentifier() and not keyword.iskeyword(n) for n in names)
    try:
        return onnx2torch.convert(model, save_input_names=keep_names)  # type: ignore[no-any-return]
    except Exception as err:
        raise ModelLoadError(
            f"ONNX model {str(path)!r} must convert to a torch module with onnx2torch, but: "
            f"{type(err).__name__}: {_first_line(err)}; the model can still be quantized from "
            f"its ONNX file, but not pruned or distilled"
        ) from None


def onnx_input_spec(path: str | Path, *, batch: int = 1) -> InputSpec:
    """The input spec an ONNX file declares (one input, or named inputs).

    Args:
        path: The ONNX file.
        batch: The size given to a dynamic batch axis (axis 0).

    Raises:
        ModelLoadError: A missing/unreadable file, or a dynamic axis after the batch axis.
    """
    import onnx
    from onnx import helper

    p = Path(path).expanduser()
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as err:
        raise ModelLoadError(
            f"{str(p)!r} must be a readable ONNX file, but: {_first_line(err)}"
        ) from None
    initializers = {i.name for i in model.graph.initializer}
    specs: dict[str, TensorSpec] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape: list[int] = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif axis == 0:
                shape.append(batch)
            else:
                raise ModelLoadError(
                    f"ONNX input {value.name!r} of {str(p)!r} must have fixed sizes after the "
                    f"batch axis to build example inputs, but axis {axis} is "
                    f"{dim.dim_param or 'unknown'!r}: give the input spec explicitly"
                )
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        specs[value.name] = TensorSpec(shape=shape, dtype=dtype)  # type: ignore[arg-type]
    if len(specs) == 1:
        return InputSpec(next(iter(specs.values())))
    return InputSpec(specs)


# ----------------------------------------------------------------------- input specs


class TensorSpec(BaseModel):
    """One input: its shape (batch axis first) and dtype name (``"float32"``, ``"int64"``...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: list[int]
    dtype: DType = "float32"

    @model_validator(mode="after")
    def _check_shape(self) -> TensorSpec:
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(
                f"shape must list positive sizes, batch axis first (e.g. [1, 3, 32, 32]), "
                f"but got {self.shape}"
            )
        return self


class InputSpec(RootModel[TensorSpec | dict[str, TensorSpec]]):
    """A model's inputs: one tensor ``{shape, dtype}`` or named ones ``{name: {shape, dtype}}``.

    Named inputs are passed to the module as keyword arguments (e.g. ``input_ids``,
    ``attention_mask``).

    Example:
        >>> InputSpec(TensorSpec(shape=[1, 3, 32, 32]))
        >>> InputSpec.of({"input_ids": ids, "attention_mask": mask})
    """

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _check_named(self) -> InputSpec:
        if isinstance(self.root, dict):
            if not self.root:
                raise ValueError("named inputs must hold at least one input, but got {}")
            batches = {k: v.shape[0] for k, v in self.root.items()}
            if len(set(batches.values())) != 1:
                raise ValueError(f"named inputs must share their batch size, but got {batches}")
        return self

    @property
    def names(self) -> tuple[str, ...] | None:
        """The input names, or None for one unnamed tensor."""
        return tuple(self.root) if isinstance(self.root, dict) else None

    def shapes(self) -> dict[str, list[int]]:
        """``{name: shape}``; one unnamed tensor is called ``"input"``."""
        if isinstance(self.root, dict):
            return {name: list(one.shape) for name, one in self.root.items()}
        return {"input": list(self.root.shape)}

    @classmethod
    def of(cls, example: Any) -> InputSpec:
        """The spec of example inputs: a tensor/array, a mapping of them, or a structured array.

        Raises:
            ConfigError: Something without a shape and dtype.
        """
        names = getattr(getattr(example, "dtype", None), "names", None)
        if names:  # a numpy structured array (hamnet.backends.inputs.pack_inputs)
            return cls(
                {
                    n: TensorSpec(
                        shape=[len(example), *example.dtype[n].shape],
                        dtype=example.dtype[n].base.name,
                    )
                    for n in names
                }
            )
        if isinstance(example, Mapping):
            return cls({str(k): _tensor_spec(v, str(k)) for k, v in example.items()})
        return cls(_tensor_spec(example, "example_inputs"))


def _tensor_spec(value: Any, what: str) -> TensorSpec:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise ConfigError(
            f"{what} must be a tensor or array (with shape and dtype), but got "
            f"{type(value).__name__}"
        )
    name = str(dtype).removeprefix("torch.")
    try:
        return TensorSpec(shape=[int(d) for d in shape], dtype=name)  # type: ignore[arg-type]
    except ValidationError as err:
        raise ConfigError(
            f"{what} must have a positive shape and a dtype among {list(DType.__args__)}, but "  # type: ignore[attr-defined]
            f"got shape {list(shape)} and dtype {name}: {err.errors()[0]['msg']}"
        ) from None


def example_inputs(spec: InputSpec, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
    """Build example tensors for ``spec`` with ``batch`` rows.

    Floating inputs are seeded normal noise; integer inputs are zeros (valid token ids),
    except ``*mask*`` inputs, which are ones (every token attended); bool inputs are True.

    Args:
        spec: The inputs.
        batch: The batch size (replaces the spec's own axis 0).

    Returns:
        One tensor, or ``{name: tensor}`` for named inputs.
    """
    import torch

    if batch < 1:
        raise ConfigError(f"batch must be at least 1, but got {batch}")
    generator = torch.Generator().manual_seed(0)

    def build(name: str, one: TensorSpec) -> torch.Tensor:
        dtype = getattr(torch, one.dtype)
        shape = [batch, *one.shape[1:]]
        if dtype.is_floating_point:
            return torch.randn(*shape, generator=generator).to(dtype)
        if dtype == torch.bool or "mask" in name.lower():
            return torch.ones(*shape, dtype=dtype)
        return torch.zeros(*shape, dtype=dtype)

    if isinstance(spec.root, dict):
        return {name: build(name, one) for name, one in spec.root.items()}
    return build("input", spec.root)


# ------------------------------------------------------------------ module artifacts


class ModuleArtifact(BaseModel):
    """What ``module.json`` holds.

    Attributes:
        format: Always :data:`MODULE_ARTIFACT_FORMAT`.
        source: How to rebuild the root module (relative paths: inside the artifact).
        inputs: The example input spec (pruning replays trace with it).
        output_kind: ``"class_scores"``, ``"embedding"`` or None (unknown).
        plan: The pruning plan's file name beside ``module.json``, or None.
        weights: The weights' file name beside ``module.json``, or None (the source's own).
        family: The model family it was told to be when written (a name of
            ``registry.names("family")``), or None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["hamnet-module/1"] = MODULE_ARTIFACT_FORMAT
    source: ModuleSource
    inputs: InputSpec
    output_kind: OutputKind | None = None
    plan: str | None = None
    weights: str | None = None
    family: str | None = None


def _main_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p / MODULE_FILE if p.is_dir() else p


def read_module_artifact(path: str | Path) -> ModuleArtifact:
    """Read ``module.json`` (or the folder holding it).

    Raises:
        ModelLoadError: A missing file, or one that is not a module artifact.
    """
    main = _main_file(path)
    if not main.is_file():
        raise ModelLoadError(
            f"module artifact {str(main)!r} does not exist (expected the {MODULE_FILE} "
            f"written by save_module_artifact)"
        )
    try:
        return ModuleArtifact.model_validate_json(main.read_text(encoding="utf-8"))
    except (ValidationError, OSError, UnicodeDecodeError) as err:
        detail = (
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors())
            if isinstance(err, ValidationError)
            else _first_line(err)
        )
        raise ModelLoadError(
            f"{str(main)!r} must be a module artifact (format {MODULE_ARTIFACT_FORMAT!r}), "
            f"but: {detail}"
        ) from None


def module_artifact_files(path: str | Path) -> list[Path]:
    """The main ``module.json`` and the files beside it that it names (plan, weights, root pickle).

    Files outside the artifact that its source points at (a Hugging Face directory, an
    ONNX file, a torchvision weights file) are referenced, not part of it.
    """
    main = _main_file(path)
    artifact = read_module_artifact(main)
    named = [artifact.plan, artifact.weights]
    if artifact.source.path and not Path(artifact.source.path).is_absolute():
        named.append(artifact.source.path)
    return [main, *(main.parent / n for n in named if n)]


def module_weight_files(path: str | Path) -> list[Path]:
    """The files that hold the module's weights: what its size is (the saved weights, else
    the artifact's own root pickle, else nothing stored: the source's own files)."""
    main = _main_file(path)
    artifact = read_module_artifact(main)
    if artifact.weights:
        return [main.parent / artifact.weights]
    if artifact.source.path and not Path(artifact.source.path).is_absolute():
        return [main.parent / artifact.source.path]
    if artifact.source.kind == "huggingface" and artifact.source.path:
        found = sorted(Path(artifact.source.path).glob("*.safetensors"))
        if found:
            return found
    return [main]


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_writer(dst) as out, src.open("rb") as source:
        shutil.copyfileobj(source, out)


def _atomic_torch_save(obj: Any, dst: Path) -> None:
    import torch

    with atomic_writer(dst) as out:
        torch.save(obj, out)


def _save_weights(module: nn.Module, dst: Path) -> None:
    from safetensors.torch import save_model

    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".tmp-{dst.name}.")
    os.close(fd)
    try:
        save_model(module, tmp)  # drops tied duplicates; load_model restores them
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_module_artifact(
    directory: str | Path,
    *,
    source: ModuleSource | None = None,
    inputs: InputSpec,
    module: nn.Module | None = None,
    plan: Any = None,
    output_kind: OutputKind | None = None,
    family: str | None = None,
) -> Path:
    """Write a module artifact: ``module.json`` and the files it names.

    - ``source`` and ``module``: the module's ``state_dict`` goes to
      ``weights.safetensors`` (with ``plan``: the module is the root pruned by it).
    - ``source`` alone: the source itself (with ``plan``: the root pruned by it, its
      weights as pruning leaves them).
    - ``module`` alone (an in-memory module object): ``torch.save(module)`` goes to
      ``root.pt``, named by a ``"pickle"`` source; loading it needs ``trust_checkpoint``.

    A ``"pickle"`` source file is copied into the folder as ``root.pt``; other sources'
    paths are stored absolute. ``module.json`` is written last, atomically.

    Args:
        directory: The artifact folder (created when missing).
        source: How to rebuild the root module.
        inputs: The example input spec.
        module: The module whose weights to save.
        plan: A ``ModulePlan`` (or the path of its JSON file) that turns the root into
            ``module``'s architecture.
        output_kind: What the output means; None for a Hugging Face source takes its task.
        family: The model family to record (see :attr:`ModuleArtifact.family`).

    Returns:
        The path of ``module.json``.

    Raises:
        ConfigError: Neither ``source`` nor ``module``, or a ``plan`` without ``source``.
    """
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    weights: str | None = None
    if source is None:
        if module is None:
            raise ConfigError("save_module_artifact needs source or module, but got neither")
        if plan is not None:
            raise ConfigError(
                "a plan replays pruning on a source's root module, so it needs source, but got "
                "source=None (the module itself is pickled whole)"
            )
        _atomic_torch_save(module, out / ROOT_PICKLE)
        stored = ModuleSource(kind="pickle", path=ROOT_PICKLE)
    elif source.kind == "pickle":
        src_file = Path(str(source.path)).expanduser()
        if not src_file.is_file():
            raise ModelLoadError(f"module file {str(src_file)!r} does not exist")
        if src_file.resolve() != (out / ROOT_PICKLE).resolve():
            _atomic_copy(src_file, out / ROOT_PICKLE)
        stored = ModuleSource(kind="pickle", path=ROOT_PICKLE)
    else:
        stored = source.resolved(Path.cwd())
    if source is not None and module is not None:
        _save_weights(module, out / WEIGHTS_FILE)
        weights = WEIGHTS_FILE
    plan_name: str | None = None
    if plan is not None:
        if isinstance(plan, str | Path):
            _atomic_copy(Path(plan).expanduser(), out / PLAN_FILE)
        elif hasattr(plan, "save"):  # ModulePlan.save writes atomically
            plan.save(out / PLAN_FILE)
        else:
            atomic_write_text(out / PLAN_FILE, plan.model_dump_json(indent=2))
        plan_name = PLAN_FILE
    if output_kind is None and stored.kind == "huggingface":
        task = hf_task(str(stored.path)) if stored.task == "auto" else stored.task
        output_kind = "class_scores" if task == "classification" else "embedding"
    artifact = ModuleArtifact(
        source=stored, inputs=inputs, output_kind=output_kind, plan=plan_name, weights=weights,
        family=family,
    )  # fmt: skip
    return atomic_write_text(out / MODULE_FILE, artifact.model_dump_json(indent=2))


def load_module_artifact(path: str | Path, *, trust_checkpoint: bool = False) -> nn.Module:
    """Load a module artifact: its source's root, the plan replayed, then its weights.

    Args:
        path: ``module.json`` or the folder holding it.
        trust_checkpoint: Allow a ``"pickle"`` source (its loading runs pickled code).

    Returns:
        The module, in eval mode, on the CPU.

    Raises:
        ModelLoadError: A missing or invalid file, weights that do not match the
            architecture (strict), or any error of :func:`load_source`.
    """
    main = _main_file(path)
    artifact = read_module_artifact(main)
    base = main.parent
    module = load_source(
        artifact.source,
        base_dir=base,
        trust_checkpoint=trust_checkpoint,
        with_weights=artifact.weights is None,
    )
    if artifact.plan is not None:
        from hamnet.models.replay import ModulePlan, apply_module_plan

        plan = ModulePlan.load(base / artifact.plan)
        module = apply_module_plan(module, plan, example_inputs(artifact.inputs))
    if artifact.weights is not None:
        from safetensors.torch import load_model

        weights_file = base / artifact.weights
        if not weights_file.is_file():
            raise ModelLoadError(
                f"weights file {str(weights_file)!r} named by {str(main)!r} does not exist"
            )
        try:
            load_model(module, str(weights_file), strict=True)
        except Exception as err:
            raise ModelLoadError(
                f"weights {str(weights_file)!r} must match the module rebuilt from "
                f"{artifact.source.describe()}"
                + (f" and plan {artifact.plan!r}" if artifact.plan else "")
                + f", but: {_first_line(err)}"
            ) from None
    return module.cpu().eval()
