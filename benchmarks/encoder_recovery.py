"""How far pruning + distillation of all-MiniLM-L6-v2 can go at cosine >= 0.99.

Usage::

    nice -n 10 .venv/bin/python benchmarks/encoder_recovery.py \\
        [--configs ffn:0.1,ffn:0.2,heads+ffn:0.1] [--pool 20000] [--epochs 3] \\
        [--lr 1e-4] [--hidden-weight 0.1] [--batch-size 32] [--allocation uniform] \\
        [--criterion taylor] [--max-train N] [--test] [--cache DIR]

Every configuration goes through the general path a user's module takes in hamnet
AUTO, called directly so one setting can be changed at a time:
:func:`hamnet.compress.pruning.modules.prune_module` (torch-pruning's dependency graph;
``ffn`` keeps the attention modules so only FFN neurons go, ``heads+ffn`` prunes both)
on 256 calibration sentences, then
:func:`hamnet.compress.distill.modules.distill_module` from the unpruned encoder
(cosine on the embeddings + hidden-state matching on the same-named blocks) on the
training sentences: the benchmark's 2,000 standard-library sentences plus ``--pool``
docstring sentences of the installed packages (``user_models.library_sentences``),
labelled by the original model. The best epoch on the 300 validation sentences is kept.

Each recovered model is exported, fused and quantized with hamnet's
``ort_fused_dynamic_int8`` and timed side by side (interleaved rounds, batch 1,
64 tokens) with the same recipe on the unpruned encoder (ONNX Runtime transformer fusion
+ dynamic INT8: the best single-tool recipe of ``any_model.py``).

Printed table: configuration, parameters, cosine to the FP32 embeddings on validation
(pruned, after KD, after INT8), KD seconds, INT8 p50 of the pruned model and of the
unpruned recipe in the same rounds, their ratio, and file sizes. The test split is
scored only with ``--test`` (once, for the configuration chosen on validation).
Cosines are the mean over sentences of the cosine to the FP32 embedding.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CALIBRATION_SENTENCES = 256
"""Calibration sentences of the taylor criterion (as the pipeline's prune stage)."""


@dataclass
class Split:
    """Tokenized sentences with the FP32 embeddings."""

    x: np.ndarray  # structured: input_ids, attention_mask
    y: np.ndarray  # [N, 384] float32


def load_data(pool: int, cache: Path, seq_len: int = 64) -> tuple[Any, dict[str, Split]]:
    """The encoder and its train / val / test splits (cached as ``.npz`` in ``cache``)."""
    from user_models import load_encoder, sentence_encoder

    from hamnet.backends.session import pack_inputs, unpack_inputs

    file = cache / f"encoder_pool{pool}_len{seq_len}.npz"
    if file.is_file():
        from user_models import encoder_dir

        saved = np.load(file)
        module = load_encoder(encoder_dir())
        splits = {}
        for name in ("train", "val", "test"):
            x = {k: saved[f"{name}__{k}"] for k in ("input_ids", "attention_mask")}
            splits[name] = Split(pack_inputs(x), saved[f"{name}__y"])
        return module, splits
    user = sentence_encoder(n_pool=pool, seq_len=seq_len)
    data = user.data
    splits = {
        "train": Split(data.x_train, data.y_train),
        "val": Split(data.x_val, data.y_val),
        "test": Split(data.x_test, data.y_test),
    }
    arrays = {}
    for name, split in splits.items():
        for key, value in unpack_inputs(split.x).items():
            arrays[f"{name}__{key}"] = value
        arrays[f"{name}__y"] = split.y
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **arrays)
    return user.module, splits


def to_torch(x: np.ndarray) -> dict[str, Any]:
    """A packed batch as keyword tensors."""
    import torch

    from hamnet.backends.session import unpack_inputs

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in unpack_inputs(x).items()}


def torch_cosine(module: Any, split: Split, batch: int = 64) -> float:
    """Mean cosine of ``module``'s embeddings to the FP32 ones."""
    from user_models import embed

    from hamnet.backends.session import unpack_inputs
    from hamnet.evaluate.fidelity import cosine_similarity

    return cosine_similarity(embed(module, unpack_inputs(split.x), batch), split.y)


def attention_modules(module: Any) -> list[str]:
    """Qualified names of the self-attention modules (kept for FFN-only pruning)."""
    return [n for n, _ in module.named_modules() if n.endswith("attention.self")]


def prune(module: Any, splits: dict[str, Split], what: str, ratio: float, criterion: str,
          allocation: str, seed: int) -> Any:  # fmt: skip
    """Prune ``what`` (``ffn`` or ``heads+ffn``) of ``module`` at ``ratio``."""
    from hamnet.compress.pruning.modules import prune_module

    train = splits["train"]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(train.x), size=CALIBRATION_SENTENCES, replace=False))
    calibration = [(to_torch(train.x[rows[i : i + 32]]), None) for i in range(0, len(rows), 32)]
    keep = attention_modules(module) if what == "ffn" else []
    example = to_torch(train.x[:1])
    return prune_module(
        module, example, ratio=ratio, criterion=criterion, allocation=allocation, keep=keep,
        calibration=calibration, seed=seed,
    ).model  # fmt: skip


class OrtModel:
    """An ONNX Runtime session with the profile's thread count (hamnet's ``run`` shape)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def run(self, x: dict[str, np.ndarray]) -> np.ndarray:
        """The first output on named inputs."""
        return self.session.run(None, {k: x[k] for k in self.names})[0]

    def cosine(self, split: Split, batch: int = 64) -> float:
        """Mean cosine of the outputs to the FP32 embeddings."""
        from hamnet.backends.session import unpack_inputs
        from hamnet.evaluate.fidelity import cosine_similarity

        out = np.concatenate(
            [self.run(unpack_inputs(split.x[i : i + batch])) for i in range(0, len(split.x), batch)]
        )
        return cosine_similarity(out, split.y)

    @property
    def size_mb(self) -> float:
        """File size in MB."""
        return self.path.stat().st_size / 1e6


def fusion_shape(module: Any) -> tuple[int, int] | None:
    """``(num_heads, hidden_size)`` of the wrapped encoder when every layer has the same
    head count (pruned heads included), else None (ONNX Runtime then detects them)."""
    config = getattr(getattr(module, "model", None), "config", None)
    hidden = getattr(config, "hidden_size", None)
    heads = {m.num_attention_heads for m in module.modules() if hasattr(m, "attention_head_size")}
    if not isinstance(hidden, int) or len(heads) != 1:
        return None
    return int(heads.pop()), hidden


def fused_int8(module: Any, example: dict[str, Any], folder: Path, profile: Any) -> Path:
    """Export ``module`` and quantize it with hamnet's ``ort_fused_dynamic_int8``."""
    from hamnet.backends.export import export_module
    from hamnet.compress.quantize.base import quantizer_class
    from hamnet.core.config import QuantizeStageConfig

    source = export_module(module, example, folder / "fp32" / "model.onnx", parity_atol=1e-3)
    shape = fusion_shape(module)
    if shape is not None:
        # As the peer recipe does: ONNX Runtime's fusion gets the head count and width
        # (export_module records them for a bare Hugging Face model, not for a wrapper).
        from hamnet.backends.export import TRANSFORMER_METADATA, _write_metadata

        _write_metadata(source, dict(zip(TRANSFORMER_METADATA, shape, strict=True)))
    method = quantizer_class("ort_fused_dynamic_int8")()
    cfg = QuantizeStageConfig(methods=["ort_fused_dynamic_int8"])
    target = method.quantize(source, folder / "int8", calibration=None, cfg=cfg, profile=profile)
    print(f"  {folder.name}: {'; '.join(method.extra_notes)}", flush=True)
    return target


def parse_configs(text: str) -> list[tuple[str, float]]:
    """``ffn:0.1,heads+ffn:0.2`` -> ``[("ffn", 0.1), ("heads+ffn", 0.2)]``; ``none:0``: KD
    of the unpruned copy."""
    out = []
    for item in text.split(","):
        what, _, ratio = item.strip().partition(":")
        if what not in ("ffn", "heads+ffn", "none"):
            raise SystemExit(
                f"--configs items must be ffn:R, heads+ffn:R or none:0, but got {item!r}"
            )
        out.append((what, float(ratio or 0)))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every configuration; print and return the rows."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--configs", default="ffn:0.1,ffn:0.2,ffn:0.3,heads+ffn:0.1,heads+ffn:0.2")
    parser.add_argument("--pool", type=int, default=20000, help="unlabelled package sentences")
    parser.add_argument("--max-train", type=int, default=None, help="use the first N training rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--hidden-weight", type=float, default=0.1)
    parser.add_argument("--no-hidden", action="store_true", help="output cosine only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--criterion", default="taylor")
    parser.add_argument("--allocation", default="uniform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--no-latency", action="store_true", help="skip export and timing")
    parser.add_argument("--test", action="store_true", help="also score the test split (once)")
    parser.add_argument("--cache", default="/tmp/hamnet-encoder-recovery")
    parser.add_argument("--work", default=None, help="exported models (default: CACHE/runs)")
    args = parser.parse_args(argv)
    import torch

    from hamnet.compress.distill.modules import distill_module
    from hamnet.core.env import apply_defaults
    from hamnet.evaluate.measure import paired_latency_ms

    apply_defaults()
    from peer_recipes import select_profile

    profile = select_profile("auto")
    torch.set_num_threads(profile.threads or 2)
    cache = Path(args.cache)
    started = time.perf_counter()
    teacher, splits = load_data(args.pool, cache)
    train = splits["train"]
    if args.max_train:
        train = Split(train.x[: args.max_train], train.y[: args.max_train])
    print(f"data: {len(train.x)} training / {len(splits['val'].x)} validation sentences "
          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    example = to_torch(train.x[:1])
    work = Path(args.work) if args.work else cache / "runs"
    threads = profile.threads or 2
    reference = None
    if not args.no_latency:
        reference = OrtModel(fused_int8(teacher, example, work / "unpruned", profile), threads)
    rows = []
    for what, ratio in parse_configs(args.configs):
        tick = time.perf_counter()
        student = copy.deepcopy(teacher) if what == "none" else prune(
            teacher, splits, what, ratio, args.criterion, args.allocation, args.seed
        )  # fmt: skip
        row: dict[str, Any] = {
            "config": f"{what} {ratio:.0%} {args.criterion}-{args.allocation}",
            "params_m": sum(p.numel() for p in student.parameters()) / 1e6,
            "cos_pruned": torch_cosine(student, splits["val"]),
            "prune_s": time.perf_counter() - tick,
        }
        tick = time.perf_counter()
        result = distill_module(
            teacher, student, train.x, None, objective="cosine",
            hidden_map=None if args.no_hidden else "auto", hidden_weight=args.hidden_weight,
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            val_x=splits["val"].x, seed=args.seed,
            progress=lambda r: print(f"  epoch {r['epoch']}: val loss {r['val_loss']:.5f} "
                                     f"({r['seconds']:.0f} s)", flush=True),
        )  # fmt: skip
        student = result.model
        row["kd_s"] = time.perf_counter() - tick
        row["cos_kd"] = torch_cosine(student, splits["val"])
        if args.test:
            row["cos_kd_test"] = torch_cosine(student, splits["test"])
        if reference is not None:
            tag = f"{what}-{ratio:g}-{args.criterion}-{args.allocation}-e{args.epochs}"
            model = OrtModel(fused_int8(student, example, work / tag, profile), threads)
            row["cos_int8"] = model.cosine(splits["val"])
            if args.test:
                row["cos_int8_test"] = model.cosine(splits["test"])
            one = splits["val"].x[:1]
            from hamnet.backends.session import unpack_inputs

            p50 = paired_latency_ms(
                [model, reference], unpack_inputs(one), warmup=10, repeats=args.repeats,
                rounds=args.rounds,
            )  # fmt: skip
            row.update(p50_ms=p50[0], recipe_p50_ms=p50[1], vs_recipe=p50[0] / p50[1],
                       size_mb=model.size_mb, recipe_size_mb=reference.size_mb)  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    print_table(rows, args)
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The rows as a Markdown table."""
    hidden = "none" if args.no_hidden else f"hidden-state weight {args.hidden_weight:g}"
    print(
        f"\nKD: {args.epochs} epochs, lr {args.lr:g}, batch {args.batch_size}, cosine + {hidden}; "
        f"training sentences: {2000 + args.pool if not args.max_train else args.max_train}\n"
    )
    cols = ["config", "params_m", "cos_pruned", "cos_kd", "cos_int8", "cos_kd_test",
            "cos_int8_test", "kd_s", "p50_ms", "recipe_p50_ms", "vs_recipe", "size_mb",
            "recipe_size_mb"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in rows:
        print("| " + " | ".join(_cell(r, c) for c in cols) + " |")


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.4f}" if column.startswith("cos") else f"{value:.2f}"


if __name__ == "__main__":
    main()
