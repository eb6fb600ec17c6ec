"""The Python API's AUTO goal under a latency-bound and a size-bound constraint.

Usage::

    .venv/bin/python benchmarks/optimizer.py [--out benchmarks/results/optimizer]

For the digits HAMNet (trained here, 60 epochs) and a plain MLP on the same data
(any ``nn.Module`` on ``[batch, features]``, exported to ONNX by the API), it runs
``Optimizer.optimize(goal="auto", ...)`` twice: latency-bound (p50 at most half the
FP32 baseline's best runtime) and size-bound (a quarter of the FP32 file). It records
the plan AUTO chose and why, the size and latency ratios reached, the accuracy drop,
whether the constraints and the deployment gates passed, and the wall time. Conv nets
and BERT-style encoders are not supported by the API yet, so they are not here.
Writes ``optimizer.md`` / ``optimizer.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hamnet._env import apply_defaults


def _models(data: Any) -> dict[str, Any]:
    import torch

    from hamnet.config import TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training import set_seed, train_model

    set_seed(0)
    hamnet = HAMNet(
        HAMNetConfig(input_size=64, num_classes=10, hidden_size=64, num_layers=2, num_heads=4,
                     token_size=8)
    )  # fmt: skip
    train_model(hamnet, data, TrainStageConfig(label_smoothing=0.1), progress=False)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    train_model(mlp, data, TrainStageConfig(epochs=40), progress=False)
    return {"digits-hamnet": hamnet, "mlp": mlp.eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/optimizer")
    args = parser.parse_args()
    apply_defaults()
    import numpy as np

    from hamnet.api import Constraints, Optimizer
    from hamnet.config import DataSection
    from hamnet.data import load_dataset

    data = load_dataset(DataSection())
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    rows = []
    work = Path(tempfile.mkdtemp(prefix="hamnet-optimizer-bench-"))
    for name, model in _models(data).items():
        base = Optimizer.from_pytorch(model, input_shape=[1, 64], work_dir=work / name)
        size_mb = base.model_size_mb()
        probe = base.optimize(
            "quantize", Constraints(max_accuracy_drop=1.0), validation_data=(x, y),
            preferred_backends=["onnx"], work_dir=work / name / "probe", max_rounds=1,
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
                "auto", constraints, validation_data=(x, y), work_dir=work / name / bound
            )
            report = result.report
            rows.append(
                dict(model=name, constraint=bound,
                     limit=constraints.max_latency_ms or constraints.target_size_mb,
                     plan=" | ".join(result.rounds), reasons=report.plan_reasons,
                     recommended=report.recommended, backend=report.backend_used,
                     size_reduction=report.size_reduction_ratio,
                     latency_improvement=report.latency_improvement_ratio,
                     accuracy_drop=report.accuracy_drop,
                     constraints_satisfied=report.constraints_satisfied,
                     violations=report.constraint_violations, gates=report.gates,
                     seconds=round(time.perf_counter() - started, 1))
            )  # fmt: skip
            print(json.dumps(rows[-1], default=str, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizer.json").write_text(json.dumps(rows, default=str, indent=2))
    columns = [
        "model", "constraint", "limit", "recommended", "size_x", "latency_x", "drop", "met",
        "gates", "seconds",
    ]  # fmt: skip
    lines = ["# AUTO under constraints", "", "| " + " | ".join(columns) + " |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['constraint']} | {r['limit']:.4g} | {r['recommended']} | "
            f"{r['size_reduction']:.2f} | {r['latency_improvement']:.2f} | "
            f"{100 * r['accuracy_drop']:.2f} pt | {r['constraints_satisfied']} | {r['gates']} | "
            f"{r['seconds']} |"
        )
    (out / "optimizer.md").write_text("\n".join(lines) + "\n")
    print((out / "optimizer.md").read_text())


if __name__ == "__main__":
    main()
