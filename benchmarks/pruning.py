"""Structured pruning side by side: criteria x allocations x ratios x seeds.

Usage::

    .venv/bin/python benchmarks/pruning.py [--models digits,large] [--ratios 0.3,0.5,0.7]
        [--criteria l1,taylor,random,hessian] [--allocations uniform,global,sensitivity,rspar]
        [--seeds 0,1,2] [--finetune-epochs 10] [--episodes 12] [--rounds 5]
        [--out benchmarks/results/pruning]

For every model (the default digits HAMNet; ``large`` = seed 002's hidden 256, 4
layers, input 512, on digits upsampled to 16x32 pixels with noise) it trains the
baseline once per seed, prunes it with every (criterion, allocation, ratio) under the
same fine-tuning budget, and measures test accuracy and ONNX Runtime p50 latency at
batch 1 on the x86-avx2 profile, all in one run with the same measurement code as
the pipeline. All models of one seed are timed together in interleaved rounds (median
over rounds), so machine drift does not masquerade as a speed difference between
allocations. It writes ``pruning.csv`` / ``pruning.md`` (means, bootstrap 95% CIs,
paired t-tests against uniform-l1 at the same ratio), ``accuracy_vs_speedup.png`` and
``sensitivity_heatmap.png``, and logs them to MLflow (experiment ``hamnet-benchmarks``).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hamnet.core.env import apply_defaults


def _large_dataset(seed: int) -> Any:
    """Digits upsampled to 16x32 = 512 features (seed 002's input_size) with pixel noise."""
    from sklearn.datasets import load_digits

    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.stack([np.kron(img, np.ones((2, 4))) for img in digits.images])
    x = images.reshape(len(images), -1) + rng.normal(0.0, 1.0, size=(len(images), 512))
    path = Path(tempfile.mkdtemp()) / "large.npz"
    np.savez(path, x=x.astype(np.float32), y=digits.target)
    return load_dataset(DataSection(source="file", path=str(path), seed=seed))


MODELS: dict[str, dict[str, Any]] = {
    "digits": {"hamnet": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "token_size": 8}},
    "large": {"hamnet": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "token_size": 32}},
}


def _session(model: Any, profile: Any, store: Any) -> tuple[Any, float]:
    from hamnet.backends.export import onnx_session

    session, ref = onnx_session(model, store, profile)
    return session, ref.size_mb


def _round_robin_latency(sessions: list[Any], x_one: np.ndarray, rounds: int) -> list[float]:
    """Median p50 of every session over ``rounds`` interleaved passes.

    Timing all models of one seed in turn, several times, spreads the machine's drift
    (other processes, frequency changes) over all of them instead of charging it to
    whichever model happened to be timed during a busy moment.
    """
    from hamnet.evaluate.measure import latency_ms

    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            samples[i].append(latency_ms(session, x_one, warmup=20, repeats=200)[0])
    return [float(np.median(s)) for s in samples]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from hamnet.compress.pruning import prune_hamnet
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.config import DataSection, HAMNetSection, TrainStageConfig
    from hamnet.core.hardware import load_profile
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import evaluate_accuracy, set_seed, train_model

    torch.set_num_threads(1)
    profile = load_profile("x86-avx2")
    store = ArtifactStore(Path(tempfile.mkdtemp()) / "store")
    finetune = TrainStageConfig(
        epochs=args.finetune_epochs, patience=args.finetune_epochs, learning_rate=1e-3,
        warmup_epochs=0, label_smoothing=0.1,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    for model_name in args.models:
        for seed in args.seeds:
            data = (
                load_dataset(DataSection(seed=seed))
                if model_name == "digits"
                else _large_dataset(seed)
            )
            section = HAMNetSection(**MODELS[model_name]["hamnet"])
            set_seed(seed)
            base = HAMNet(HAMNetConfig.from_section(section, data.num_features, data.num_classes))
            train_model(
                base, data, TrainStageConfig(label_smoothing=0.1, epochs=args.train_epochs),
                seed=seed, progress=False,
            )  # fmt: skip
            x_one = data.x_test[:1]
            base_acc = evaluate_accuracy(base, data.x_test, data.y_test)
            base_session, base_mb = _session(base, profile, store)
            seed_rows = [
                dict(model=model_name, seed=seed, criterion="none", allocation="none", ratio=0.0,
                     accuracy=base_acc, size_mb=base_mb,
                     params=sum(p.numel() for p in base.parameters()), seconds=0.0)
            ]  # fmt: skip
            sessions = [base_session]
            print(f"[{model_name} seed {seed}] baseline acc {base_acc:.4f}")
            for criterion, allocation, ratio in itertools.product(
                args.criteria, args.allocations, args.ratios
            ):
                started = time.perf_counter()
                options: dict[str, Any] = {}
                if allocation == "rspar":
                    options = {"target": "latency", "profile": profile, "episodes": args.episodes}
                result = prune_hamnet(
                    base, data, ratio=ratio, criterion=criterion, allocation=allocation,
                    finetune=finetune, seed=seed, allocation_options=options,
                )  # fmt: skip
                acc = evaluate_accuracy(result.model, data.x_test, data.y_test)
                session, mb = _session(result.model, profile, store)
                sessions.append(session)
                seed_rows.append(
                    dict(model=model_name, seed=seed, criterion=criterion, allocation=allocation,
                         ratio=ratio, accuracy=acc, size_mb=mb, params=result.params_after,
                         seconds=time.perf_counter() - started,
                         layer_heads=result.model.config.layer_heads,
                         layer_ffn=result.model.config.layer_ffn)
                )  # fmt: skip
                print(
                    f"  {criterion:8s} {allocation:11s} {ratio:.0%}: acc {acc:.4f} "
                    f"heads {result.model.config.layer_heads} ffn {result.model.config.layer_ffn}"
                )
            latencies = _round_robin_latency(sessions, x_one, args.rounds)
            for row, lat in zip(seed_rows, latencies, strict=True):
                row.update(latency_ms=lat, speedup=latencies[0] / lat)
            print(f"  latency (ms, median of {args.rounds} interleaved rounds): baseline "
                  f"{latencies[0]:.4f}, pruned {min(latencies[1:], default=0):.4f}-"
                  f"{max(latencies[1:], default=0):.4f}")  # fmt: skip
            rows.extend(seed_rows)
            del sessions
    return rows


def summarize(rows: list[dict[str, Any]]) -> Any:
    """Mean accuracy with bootstrap CIs and paired t-tests against uniform-l1."""
    import pandas as pd
    from scipy import stats

    df = pd.DataFrame(rows)
    pruned = df[df["criterion"] != "none"]
    out = []
    for (model, crit, alloc, ratio), grp in pruned.groupby(
        ["model", "criterion", "allocation", "ratio"]
    ):
        acc = grp.sort_values("seed")["accuracy"].to_numpy()
        lo = hi = float("nan")
        if len(acc) >= 2 and np.ptp(acc) > 0:
            ci = stats.bootstrap((acc,), np.mean, confidence_level=0.95, n_resamples=2000,
                                 random_state=0).confidence_interval  # fmt: skip
            lo, hi = float(ci.low), float(ci.high)
        ref_rows = pruned[
            (pruned["model"] == model) & (pruned["criterion"] == "l1")
            & (pruned["allocation"] == "uniform") & (pruned["ratio"] == ratio)
        ].sort_values("seed")  # fmt: skip
        ref = ref_rows["accuracy"].to_numpy()
        latency_ratio = float("nan")
        if len(ref_rows) == len(grp):
            latency_ratio = float(
                np.mean(grp.sort_values("seed")["latency_ms"].to_numpy()
                        / ref_rows["latency_ms"].to_numpy())
            )  # fmt: skip
        p_value = float("nan")
        if len(ref) == len(acc) >= 2 and (crit, alloc) != ("l1", "uniform"):
            diff = acc - ref
            if np.ptp(diff) > 0:
                p_value = float(stats.ttest_rel(acc, ref).pvalue)
        out.append(
            dict(model=model, criterion=crit, allocation=alloc, ratio=ratio,
                 accuracy_mean=acc.mean(), ci95_low=lo, ci95_high=hi,
                 delta_vs_uniform_l1=acc.mean() - ref.mean() if len(ref) else float("nan"),
                 p_value_vs_uniform_l1=p_value, speedup_mean=grp["speedup"].mean(),
                 latency_vs_uniform_l1=latency_ratio,
                 latency_ms_mean=grp["latency_ms"].mean(), size_mb_mean=grp["size_mb"].mean(),
                 seeds=len(acc))
        )  # fmt: skip
    return df, pd.DataFrame(out)


def latency_matched(summary: Any) -> Any:
    """Each method's accuracy at the speed-up uniform-l1 reaches, by interpolation.

    Methods spend the same parameter budget differently, so at equal ratio they are not
    equally fast. For every uniform-l1 point (ratio r, speed-up s) this interpolates
    each method's accuracy-vs-speed-up curve (over its ratios) at s; points outside a
    method's measured range are left empty rather than extrapolated.
    """
    import pandas as pd

    rows = []
    for model, sub in summary.groupby("model"):
        ref = sub[(sub["criterion"] == "l1") & (sub["allocation"] == "uniform")]
        for (crit, alloc), grp in sub.groupby(["criterion", "allocation"]):
            grp = grp.sort_values("speedup_mean")
            xs, ys = grp["speedup_mean"].to_numpy(), grp["accuracy_mean"].to_numpy()
            for _, point in ref.iterrows():
                s = point["speedup_mean"]
                inside = xs.min() <= s <= xs.max()
                acc = float(np.interp(s, xs, ys)) if inside else float("nan")
                rows.append(
                    dict(model=model, criterion=crit, allocation=alloc,
                         reference_ratio=point["ratio"], matched_speedup=s,
                         uniform_l1_accuracy=point["accuracy_mean"], accuracy_at_speedup=acc,
                         delta_points=100 * (acc - point["accuracy_mean"]))
                )  # fmt: skip
    return pd.DataFrame(rows)


def plots(df: Any, summary: Any, out: Path, args: argparse.Namespace) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    models = list(summary["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        base = df[(df["model"] == model) & (df["criterion"] == "none")]["accuracy"].mean()
        sub = summary[summary["model"] == model]
        criteria = sorted(sub["criterion"].unique())
        allocations = sorted(sub["allocation"].unique())
        for (crit, alloc), grp in sub.groupby(["criterion", "allocation"]):
            grp = grp.sort_values("ratio")
            ax.plot(
                grp["speedup_mean"], 100 * grp["accuracy_mean"],
                color=f"C{criteria.index(crit)}", marker="os^Dv"[allocations.index(alloc) % 5],
                ls=["-", "--", ":", "-."][allocations.index(alloc) % 4],
                label=f"{crit} / {alloc}",
            )  # fmt: skip
        ax.axhline(100 * base, color="grey", ls="--", lw=0.8, label="unpruned")
        ax.set_xlabel("ONNX Runtime p50 speed-up at batch 1 (x)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}: accuracy vs speed-up (ratios {args.ratios})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "accuracy_vs_speedup.png"
    fig.savefig(path, dpi=120)
    files.append(path)
    heat = _sensitivity_heatmap(out)
    if heat is not None:
        files.append(heat)
    return files


def _sensitivity_heatmap(out: Path) -> Path | None:
    """Per-head K-FAC/OBS saliency of the digits HAMNet (layers x heads)."""
    try:
        from hamnet.compress.pruning.hessian import HOBSSensitivityAnalyzer
    except ImportError:
        return None
    import matplotlib.pyplot as plt

    from hamnet.core.config import DataSection, HAMNetSection, TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import set_seed, train_model

    data = load_dataset(DataSection())
    set_seed(0)
    section = HAMNetSection(**MODELS["digits"]["hamnet"])
    model = HAMNet(HAMNetConfig.from_section(section, data.num_features, data.num_classes))
    train_model(model, data, TrainStageConfig(label_smoothing=0.1), progress=False)
    analyzer = HOBSSensitivityAnalyzer(model)
    analyzer.compute_sensitivity(data, num_batches=8)
    scores = np.stack([s.detach().cpu().numpy() for s in analyzer.head_scores(model)])
    fig, ax = plt.subplots(figsize=(6, 3))
    image = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_yticks(range(scores.shape[0]))
    ax.set_title("K-FAC OBS saliency per attention head (digits HAMNet)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = out / "sensitivity_heatmap.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split = lambda cast: lambda text: [cast(t) for t in text.split(",") if t]  # noqa: E731
    parser.add_argument("--models", type=split(str), default=["digits", "large"])
    parser.add_argument("--ratios", type=split(float), default=[0.3, 0.5, 0.7])
    parser.add_argument(
        "--criteria", type=split(str), default=["l1", "taylor", "random", "hessian"]
    )
    parser.add_argument(
        "--allocations", type=split(str), default=["uniform", "global", "sensitivity", "rspar"]
    )
    parser.add_argument("--seeds", type=split(int), default=[0, 1, 2])
    parser.add_argument("--train-epochs", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds per seed")
    parser.add_argument("--out", default="benchmarks/results/pruning")
    parser.add_argument("--mlflow", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    apply_defaults()

    from hamnet.evaluate.report import to_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df, summary = summarize(run(args))
    df.to_csv(out / "pruning_runs.csv", index=False)
    summary.to_csv(out / "pruning.csv", index=False)
    matched = latency_matched(summary)
    matched.to_csv(out / "latency_matched.csv", index=False)
    (out / "pruning.md").write_text(
        "# Structured pruning benchmark\n\n"
        f"Same fine-tuning budget ({args.finetune_epochs} epochs) for every method; latency "
        "is ONNX Runtime p50 at batch 1 on profile x86-avx2 (1 intra-op thread pinned for "
        "training only). p-values: paired t-test over seeds against uniform-l1 at the same "
        "ratio. latency_vs_uniform_l1: mean over seeds of the method's p50 divided by "
        "uniform-l1's p50 at the same ratio and seed (timed in the same interleaved rounds); "
        "within about ±3% the two run at the same measured latency.\n\n"
        + to_markdown(summary)
        + "\n\n## At the speed-up uniform-l1 reaches\n\n"
        "Accuracy of each method interpolated at uniform-l1's measured speed-up "
        "(empty where outside the method's measured range).\n\n" + to_markdown(matched) + "\n"
    )
    files = plots(df, summary, out, args)
    print((out / "pruning.md").read_text())
    from hamnet.tracking.tracker import log_benchmark_files

    tables = ["pruning.csv", "pruning.md", "pruning_runs.csv", "latency_matched.csv"]
    log_benchmark_files(args.mlflow, "pruning", [*(out / name for name in tables), *files])


if __name__ == "__main__":
    main()
