"""The Python API's AUTO goal under a latency-bound and a size-bound constraint.

Usage::

    .venv/bin/python benchmarks/optimizer.py [--out benchmarks/results/optimizer]
                                             [--models digits-hamnet,conv,bert]

Three models, each handed to the API the way a user would:

* ``digits-hamnet``: the digits HAMNet (trained here, 60 epochs), a checkpoint the
  pipeline can prune, distill and quantize;
* ``conv``: a small convolutional net on the digits reshaped to ``[N, 1, 8, 8]``
  (three Conv2d layers, trained here), exported to ONNX by the API (4-D input, so
  AUTO plans OpenVINO INT8 via NNCF);
* ``bert``: a small random-init BERT encoder (``transformers.BertModel`` from a
  ``BertConfig`` with 2 layers, 4 heads, hidden 64; nothing is downloaded) taking
  ``input_ids``/``attention_mask`` of sequence length 32, exported with its
  ``last_hidden_state`` output. Its weights are random, so there are no labels: its
  "accuracy" is the mean cosine similarity of each candidate's hidden states to the
  original's (AUTO plans ONNX Runtime transformer fusion + dynamic INT8).

For each it first measures the FP32 model (no quantization) and then runs
``Optimizer.optimize(goal="auto", ...)`` twice: latency-bound (p50 at most half the
FP32 baseline's best runtime) and size-bound (a quarter of the FP32 file), each with
``max_accuracy_drop=0.01`` (for the BERT encoder: cosine similarity at least 0.99). It
records the plan AUTO chose and why, the size and latency ratios reached, the metric
and its drop, whether the constraints and the deployment gates passed, and the wall
time. Writes ``optimizer.md`` / ``optimizer.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hamnet.core.env import apply_defaults

SEQ_LEN = 32
MODELS = ("digits-hamnet", "conv", "bert")


def _hamnet(data: Any) -> Any:
    from hamnet.core.config import TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.trainer import set_seed, train_model

    set_seed(0)
    hamnet = HAMNet(
        HAMNetConfig(input_size=64, num_classes=10, hidden_size=64, num_layers=2, num_heads=4,
                     token_size=8)
    )  # fmt: skip
    train_model(hamnet, data, TrainStageConfig(label_smoothing=0.1), progress=False)
    return hamnet


def _conv(data: Any) -> Any:
    """Three Conv2d layers on [N, 1, 8, 8]; trained through a [N, 64] -> image view."""
    from torch import nn

    from hamnet.core.config import TrainStageConfig
    from hamnet.training.trainer import set_seed, train_model

    set_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip
    trainable = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), conv)
    train_model(trainable, data, TrainStageConfig(epochs=30), progress=False)
    return conv.eval()


def _bert() -> Any:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config).eval()


def _tokens(n: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(n, SEQ_LEN), dtype=np.int64)
    mask = np.ones((n, SEQ_LEN), dtype=np.int64)
    for i, length in enumerate(rng.integers(SEQ_LEN // 2, SEQ_LEN + 1, size=n)):
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _subjects(names: list[str], data: Any) -> dict[str, tuple[Any, Any]]:
    """``{name: (optimizer factory, validation_data)}``."""
    import numpy as np
    import torch

    from hamnet.api.optimizer import Optimizer

    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    out: dict[str, tuple[Any, Any]] = {}
    for name in names:
        if name == "digits-hamnet":
            model = _hamnet(data)
            out[name] = (lambda w, m=model: Optimizer.from_pytorch(m, [1, 64], work_dir=w),
                         (x, y))  # fmt: skip
        elif name == "conv":
            model = _conv(data)
            out[name] = (lambda w, m=model: Optimizer.from_pytorch(m, [1, 1, 8, 8], work_dir=w),
                         (x.reshape(-1, 1, 8, 8), y))  # fmt: skip
        elif name == "bert":
            model = _bert()
            examples = {k: torch.from_numpy(v) for k, v in _tokens(2, seed=99).items()}
            out[name] = (
                lambda w, m=model, e=examples: Optimizer.from_pytorch(
                    m, example_inputs=e, work_dir=w
                ),
                (_tokens(400, seed=0), None),
            )
        else:
            raise SystemExit(f"--models must name some of {list(MODELS)}, but got {name!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/optimizer")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    apply_defaults()
    from hamnet.api.optimizer import Constraints
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    data = load_dataset(DataSection())
    rows = []
    work = Path(tempfile.mkdtemp(prefix="hamnet-optimizer-bench-"))
    for name, (make, validation) in _subjects(args.models.split(","), data).items():
        base = make(work / name)
        size_mb = base.model_size_mb()
        probe = base.optimize(
            "quantize", Constraints(max_accuracy_drop=1.0), validation_data=validation,
            work_dir=work / name / "probe", _overrides={"stages": {"quantize": None}},
        )  # fmt: skip
        fp32_ms = min(
            c.metrics.latency_p50_ms
            for c in probe.candidates
            if c.metrics is not None and c.precision == "fp32" and c.runtime != "torch"
        )
        bounds = {
            "latency-bound": Constraints(max_latency_ms=fp32_ms / 2, max_accuracy_drop=0.01),
            "size-bound": Constraints(target_size_mb=size_mb / 4, max_accuracy_drop=0.01),
        }
        for bound, constraints in bounds.items():
            started = time.perf_counter()
            result = base.optimize(
                "auto", constraints, validation_data=validation, work_dir=work / name / bound
            )
            report = result.report
            methods = result.config.stages.quantize.methods if result.config.stages.quantize else []
            rows.append(
                dict(model=name, family=base.family, constraint=bound,
                     limit=constraints.max_latency_ms or constraints.target_size_mb,
                     fp32_ms=fp32_ms, fp32_mb=size_mb,
                     plan=" | ".join(result.rounds), methods=methods,
                     reasons=report.plan_reasons, metric=report.accuracy_kind.split(" ")[0],
                     recommended=report.recommended, backend=report.backend_used,
                     size_reduction=report.size_reduction_ratio,
                     latency_improvement=report.latency_improvement_ratio,
                     accuracy_drop=report.accuracy_drop,
                     constraints_satisfied=report.constraints_satisfied,
                     violations=report.constraint_violations, gates=report.gates,
                     seconds=round(time.perf_counter() - started, 1))
            )  # fmt: skip
            print(json.dumps(rows[-1], default=str, indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizer.json").write_text(json.dumps(rows, default=str, indent=2))
    columns = [
        "model", "constraint", "limit", "quantization methods", "recommended", "size_x",
        "latency_x", "metric", "drop", "met", "gates", "seconds",
    ]  # fmt: skip
    lines = [
        "# AUTO under constraints",
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['constraint']} | {r['limit']:.4g} | "
            f"{', '.join(r['methods'])} | {r['recommended']} ({r['backend']}) | "
            f"{_num(r['size_reduction'])} | {_num(r['latency_improvement'])} | {r['metric']} | "
            f"{_num(None if r['accuracy_drop'] is None else 100 * r['accuracy_drop'])} pt | "
            f"{r['constraints_satisfied']} | {_gates(r['gates'])} | {r['seconds']} |"
        )
    lines += ["", "## Why (AUTO's reasons and rounds)", ""]
    for r in rows:
        lines.append(f"- **{r['model']} / {r['constraint']}**: {'; '.join(r['reasons'])}. "
                     f"Rounds: {r['plan']}")  # fmt: skip
    (out / "optimizer.md").write_text("\n".join(lines) + "\n")
    print((out / "optimizer.md").read_text())


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _gates(gates: dict[str, Any]) -> str:
    parity = gates.get("parity_max_abs_diff")
    return (
        f"loads={gates.get('loads_in_runtime')}, faster={gates.get('faster_than_parent')}, "
        f"parity={'n/a' if parity is None else f'{parity:.2g}'}"
    )


if __name__ == "__main__":
    main()
