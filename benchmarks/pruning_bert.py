"""Head/FFN pruning of a BERT-style encoder: is the exported model smaller AND faster?

Usage::

    .venv/bin/python benchmarks/pruning_bert.py [--ratios 0.3,0.5,0.7] [--rounds 5]
        [--hidden 256] [--layers 4] [--heads 8] [--seq 64]
        [--out benchmarks/results/pruning-bert]

Builds a randomly initialised ``BertForSequenceClassification`` (nothing is
downloaded, so accuracy is not measured here: see ``benchmarks/pruning.py`` for
accuracy on trained HAMNets), prunes ``ratio`` of the heads and FFN neurons of every
layer with ``hamnet.compress.pruning.prune_bert`` (l1, uniform), exports each model to ONNX
(TorchScript exporter, eager attention) and times them in ONNX Runtime at batch 1, all
models interleaved over ``--rounds`` rounds, FP32 and ORT dynamic INT8. Writes
``pruning_bert.md`` / ``.csv``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch


class _Logits(torch.nn.Module):
    """Wraps a HF model so the exported graph returns only the logits tensor."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _export(model: Any, path: Path, seq: int) -> Path:
    ids = torch.randint(0, 100, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(model).eval(), (ids, mask), str(path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
        )  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split = lambda cast: lambda text: [cast(t) for t in text.split(",") if t]  # noqa: E731
    parser.add_argument("--ratios", type=split(float), default=[0.3, 0.5, 0.7])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/pruning-bert")
    parser.add_argument("--mlflow", default="sqlite:///mlflow.db")
    args = parser.parse_args()

    import onnxruntime as ort
    import pandas as pd
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertConfig, BertForSequenceClassification

    from hamnet.compress.pruning import prune_bert
    from hamnet.evaluate.report import to_markdown

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
        max_position_embeddings=max(128, args.seq), num_labels=2,
    )  # fmt: skip
    config._attn_implementation = "eager"
    base = BertForSequenceClassification(config).eval()
    tmp = Path(tempfile.mkdtemp(prefix="bert-bench-"))
    models = {"unpruned": base}
    for ratio in args.ratios:
        models[f"pruned-{round(100 * ratio)}"] = prune_bert(base, ratio)[0].eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions: dict[tuple[str, str], Any] = {}
    sizes: dict[tuple[str, str], float] = {}
    for name, model in models.items():
        fp32 = _export(model, tmp / f"{name}.onnx", args.seq)
        int8 = tmp / f"{name}.int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)  # fmt: skip
        for precision, path in (("fp32", fp32), ("int8-dynamic", int8)):
            sessions[name, precision] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            sizes[name, precision] = path.stat().st_size / 1e6
    feeds = {
        "input_ids": np.random.default_rng(0).integers(0, 1000, (1, args.seq), dtype=np.int64),
        "attention_mask": np.ones((1, args.seq), dtype=np.int64),
    }
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}

    for _ in range(args.rounds):
        for key, session in sessions.items():
            for _ in range(10):
                session.run(None, feeds)
            times = []
            for _ in range(100):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(1000 * (time.perf_counter() - start))
            samples[key].append(float(np.median(times)))
    rows = []
    base_ms = {p: float(np.median(samples["unpruned", p])) for p in ("fp32", "int8-dynamic")}
    for (name, precision), values in samples.items():
        ms = float(np.median(values))
        rows.append(
            dict(model=name, precision=precision,
                 params=sum(p.numel() for p in models[name].parameters()),
                 size_mb=round(sizes[name, precision], 2), p50_ms=round(ms, 3),
                 speedup_vs_unpruned_same_precision=round(base_ms[precision] / ms, 2),
                 speedup_vs_unpruned_fp32=round(base_ms["fp32"] / ms, 2))
        )  # fmt: skip
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pruning_bert.csv", index=False)
    (out / "pruning_bert.md").write_text(
        f"# BERT head/FFN pruning in ONNX Runtime\n\nRandom-init BERT (hidden {args.hidden}, "
        f"{args.layers} layers, {args.heads} heads, FFN {4 * args.hidden}), sequence "
        f"{args.seq}, batch 1, 1 intra-op thread, median of {args.rounds} interleaved rounds "
        "of 100 calls.\n\n" + to_markdown(table) + "\n"
    )
    print((out / "pruning_bert.md").read_text())
    from hamnet.tracking.tracker import log_benchmark_files

    files = [out / "pruning_bert.csv", out / "pruning_bert.md"]
    log_benchmark_files(args.mlflow, "pruning-bert", files)


if __name__ == "__main__":
    main()
