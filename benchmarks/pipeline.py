"""Run the default pipeline and compare every candidate with the FP32 baseline.

Usage::

    .venv/bin/python benchmarks/pipeline.py [--config configs/default.yaml] [--out DIR]

Writes ``pipeline.csv``, ``pipeline.md``, ``pipeline.png`` and ``machine.json`` to
``--out`` (default ``benchmarks/results/pipeline``): per candidate, accuracy and its
drop, latency p50/p90 at batch 1, throughput, size, and the ratios of size and
latency to the FP32 PyTorch baseline and to the fastest FP32 runtime, all measured in
one run by the same measurement code the pipeline uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hamnet.core.env import apply_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", default="benchmarks/results/pipeline")
    args = parser.parse_args()
    apply_defaults()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hamnet.core.config import load_config
    from hamnet.evaluate.report import to_markdown
    from hamnet.pipeline.run import run_pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config, {"tracking": {"enabled": False}})
    result = run_pipeline(config, run_name="benchmark-pipeline")
    df = result.table.copy()
    fp32 = df[df["precision"] == "fp32"]
    best = fp32.loc[fp32["latency_p50_ms"].idxmin()]
    df["latency_ratio_vs_best_fp32"] = best["latency_p50_ms"] / df["latency_p50_ms"]
    df["size_ratio_vs_best_fp32"] = best["size_mb"] / df["size_mb"]
    columns = [
        "name", "runtime", "precision", "accuracy", "accuracy_drop", "latency_p50_ms",
        "latency_p90_ms", "throughput_sps", "size_mb", "size_ratio", "latency_ratio",
        "latency_ratio_vs_best_fp32", "size_ratio_vs_best_fp32", "on_front",
        "meets_constraints", "recommended", "rejected",
    ]  # fmt: skip
    table = df[columns]
    table.to_csv(out / "pipeline.csv", index=False)
    from machine import machine_info

    info = machine_info()
    header = (
        f"# Pipeline benchmark\n\nConfig `{args.config}`, machine: {info['cpu']} "
        f"({info['cores']} cores, flags {', '.join(info['flags'])}). Ratios are "
        f"baseline / candidate (higher is better); the fastest FP32 point is "
        f"**{best['name']}** ({best['latency_p50_ms']:.3f} ms).\n\n"
    )
    (out / "pipeline.md").write_text(header + to_markdown(table) + "\n")
    (out / "machine.json").write_text(json.dumps(info, indent=2))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = table["name"]
    axes[0].barh(names, table["size_ratio"])
    axes[0].set_xlabel("times smaller than FP32 baseline")
    axes[1].barh(names, table["latency_ratio"])
    axes[1].set_xlabel("times faster than FP32 baseline (p50, batch 1)")
    axes[2].barh(names, 100 * table["accuracy_drop"])
    axes[2].set_xlabel("accuracy drop (points)")
    for ax in axes:
        ax.axvline(1.0 if ax is not axes[2] else 0.0, color="grey", lw=0.8)
        ax.invert_yaxis()
    fig.suptitle(f"hamnet pipeline candidates vs FP32 baseline ({info['cpu']})")
    fig.tight_layout()
    fig.savefig(out / "pipeline.png", dpi=120)
    print((out / "pipeline.md").read_text())


if __name__ == "__main__":
    main()
