"""Knowledge distillation side by side: plain fine-tuning vs each KD method vs combinations.

Usage::

    .venv/bin/python benchmarks/distillation.py
        [--scenarios pruned70,pruned70-labels10,quarter,tiny] [--seeds 0,1,2,3,4]
        [--recovery-epochs 10] [--recovery-lr 1e-3] [--labelled-fraction 0.1]
        [--student-epochs 30]
        [--out benchmarks/results/distillation]

Two scenarios on the digits data, each where the student clearly loses accuracy
without help:

* ``pruned70``: the trained digits HAMNet (hidden 64, 2 layers, 4 heads) pruned by 70%
  (l1, uniform, no fine-tuning), then recovered for ``--recovery-epochs`` epochs;
* ``quarter``: a fresh student with about a quarter of the teacher's parameters
  (hidden 32, 2 heads) trained from scratch for ``--student-epochs`` epochs;
* ``tiny``: a fresh student with about a tenth (hidden 16, 2 layers, 2 heads), same
  epochs;
* ``pruned70-labels10``: the 70%-pruned model recovered when only
  ``--labelled-fraction`` (default 10%) of the training split has labels, the usual
  case after deployment (inputs are plentiful, labels are not). Plain fine-tuning can
  learn from the labelled samples only and gets as many optimizer steps as the others
  (its epochs are scaled by ``1 / fraction``); the KD methods get the same labelled
  samples plus the rest of the training inputs as an unlabelled transfer set (the
  ``distill.unlabelled_data`` option of the pipeline), labelled by the teacher.

Every method gets the same epochs, data, seed and optimizer; only the loss differs.
``plain`` is cross-entropy (with the same label smoothing as the teacher); each KD
method adds its term to ``0.5 * CE`` (self-distillation, an auxiliary loss, to ``1.0 *
CE``). The best combination is chosen on VALIDATION
accuracy (mean over seeds) among a few fixed combinations, then reported on test.
Multi-teacher uses the teacher plus a second, wider teacher trained from another seed.
Writes ``distillation.csv`` / ``distillation.md`` (means, bootstrap 95% CIs, paired
t-tests against plain, share of the teacher-vs-plain gap closed) and
``distillation.png``, and logs them to MLflow (experiment ``hamnet-benchmarks``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from hamnet.core.env import apply_defaults

SINGLE: dict[str, list[dict[str, Any]]] = {
    "plain": [],
    "soft": [{"method": "soft", "temperature": 4.0}],
    "feature": [{"method": "feature", "layers": "depth", "normalize": True}],
    "attention": [{"method": "attention", "layers": "depth"}],
    "relational": [{"method": "relational"}],
    "multi_teacher": [{"method": "multi_teacher", "weighting": "confidence"}],
    "self": [{"method": "self", "mode": "deep"}],
}
COMBINATIONS: dict[str, list[dict[str, Any]]] = {
    "soft+feature": [*SINGLE["soft"], *SINGLE["feature"]],
    "soft+attention": [*SINGLE["soft"], {**SINGLE["attention"][0], "weight": 10.0}],
    "soft+relational": [*SINGLE["soft"], *SINGLE["relational"]],
    "multi_teacher+feature": [*SINGLE["multi_teacher"], *SINGLE["feature"]],
}


def _train_cfg(epochs: int, lr: float) -> Any:
    from hamnet.core.config import TrainStageConfig

    return TrainStageConfig(
        epochs=epochs, patience=epochs, learning_rate=lr, warmup_epochs=0, label_smoothing=0.1
    )


def _teachers(data: Any, seed: int, epochs: int) -> tuple[Any, Any]:
    from hamnet.core.config import TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.trainer import set_seed, train_model

    made = []
    for hidden, offset in ((64, 0), (96, 1000)):
        set_seed(seed + offset)
        model = HAMNet(
            HAMNetConfig(
                input_size=data.num_features, num_classes=data.num_classes, hidden_size=hidden,
                num_layers=2, num_heads=4, token_size=8,
            )
        )  # fmt: skip
        train_model(
            model, data, TrainStageConfig(epochs=epochs, label_smoothing=0.1),
            seed=seed + offset, progress=False,
        )  # fmt: skip
        made.append(model.eval())
    return made[0], made[1]


def _student(scenario: str, teacher: Any, data: Any, seed: int) -> Any:
    from hamnet.compress.pruning import prune_hamnet
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.trainer import set_seed

    if scenario.startswith("pruned70"):
        return prune_hamnet(teacher, data, ratio=0.7, criterion="l1", finetune=None).model
    set_seed(seed)
    hidden = 32 if scenario == "quarter" else 16
    return HAMNet(
        HAMNetConfig(
            input_size=data.num_features, num_classes=data.num_classes, hidden_size=hidden,
            num_layers=2, num_heads=2, token_size=8,
        )
    )  # fmt: skip


def _hide_labels(data: Any, fraction: float, seed: int) -> tuple[Any, np.ndarray]:
    """Keep the labels of a stratified ``fraction`` of the training split.

    Returns:
        The data with only the labelled training samples, and the other inputs.
    """
    import dataclasses

    from sklearn.model_selection import train_test_split

    keep, hide = train_test_split(
        np.arange(len(data.x_train)), train_size=fraction, stratify=data.y_train,
        random_state=seed,
    )  # fmt: skip
    labelled = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    return labelled, data.x_train[hide]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from hamnet.compress.distill.train import distill_model
    from hamnet.core.config import DataSection
    from hamnet.models import count_parameters
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import evaluate_accuracy, train_model

    torch.set_num_threads(1)
    methods = {
        name: spec
        for name, spec in {**SINGLE, **COMBINATIONS}.items()
        if not args.methods or name in args.methods
    }
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        data = load_dataset(DataSection(seed=seed))
        teacher, second = _teachers(data, seed, args.teacher_epochs)
        teacher_acc = evaluate_accuracy(teacher, data.x_test, data.y_test)
        second_acc = evaluate_accuracy(second, data.x_test, data.y_test)
        print(f"[seed {seed}] teacher {teacher_acc:.4f}, second teacher {second_acc:.4f}")
        for scenario in args.scenarios:
            start_model = _student(scenario, teacher, data, seed)
            recovery = scenario.startswith("pruned70")
            epochs = args.recovery_epochs if recovery else args.student_epochs
            lr = args.recovery_lr if recovery else 2e-3
            train_data, transfer = data, None
            if scenario == "pruned70-labels10":
                train_data, transfer = _hide_labels(data, args.labelled_fraction, seed)
            for name, spec in methods.items():
                student = copy.deepcopy(start_model)
                started = time.perf_counter()
                cfg = _train_cfg(epochs, lr)
                if not spec:
                    if transfer is not None:  # as many optimizer steps as the KD runs
                        cfg = _train_cfg(
                            round(epochs * len(data.x_train) / len(train_data.x_train)), lr
                        )
                    train_model(student, train_data, cfg, seed=seed, progress=False)
                else:
                    multi = any(t["method"] == "multi_teacher" for t in spec)
                    teachers = [] if name == "self" else [teacher, *([second] if multi else [])]
                    # Self-distillation is an auxiliary loss: it keeps the full label loss.
                    ce = 1.0 if name == "self" else 0.5
                    distill_model(
                        student, teachers, train_data, spec, cfg, ce_weight=ce, seed=seed,
                        progress=False, unlabelled_x=transfer,
                    )  # fmt: skip
                val = evaluate_accuracy(student, data.x_val, data.y_val)
                acc = evaluate_accuracy(student, data.x_test, data.y_test)
                rows.append(
                    dict(scenario=scenario, seed=seed, method=name,
                         combination=name in COMBINATIONS, accuracy=acc, val_accuracy=val,
                         teacher_accuracy=teacher_acc, params=count_parameters(student),
                         teacher_params=count_parameters(teacher), epochs=epochs,
                         seconds=time.perf_counter() - started)
                )  # fmt: skip
                print(f"  {scenario:9s} {name:22s} test {acc:.4f} val {val:.4f}")
    return rows


def summarize(rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Means, bootstrap CIs, paired t-tests vs plain and the share of the gap closed."""
    import pandas as pd
    from scipy import stats

    df = pd.DataFrame(rows)
    out = []
    for scenario, sub in df.groupby("scenario"):
        plain = sub[sub["method"] == "plain"].sort_values("seed")["accuracy"].to_numpy()
        teacher = sub[sub["method"] == "plain"].sort_values("seed")["teacher_accuracy"].to_numpy()
        combos = sub[sub["combination"]].groupby("method")["val_accuracy"].mean()
        best_combo = str(combos.idxmax()) if len(combos) else ""
        for method, grp in sub.groupby("method", sort=False):
            acc = grp.sort_values("seed")["accuracy"].to_numpy()
            lo = hi = p_value = float("nan")
            if len(acc) >= 2 and np.ptp(acc) > 0:
                ci = stats.bootstrap((acc,), np.mean, confidence_level=0.95, n_resamples=2000,
                                     random_state=0).confidence_interval  # fmt: skip
                lo, hi = float(ci.low), float(ci.high)
            if method != "plain" and len(acc) == len(plain) >= 2 and np.ptp(acc - plain) > 0:
                p_value = float(stats.ttest_rel(acc, plain).pvalue)
            gap = float(teacher.mean() - plain.mean())
            out.append(
                dict(scenario=scenario, method=method,
                     best_combination=method == best_combo,
                     accuracy_mean=acc.mean(), ci95_low=lo, ci95_high=hi,
                     delta_vs_plain_points=100 * (acc.mean() - plain.mean()),
                     p_value_vs_plain=p_value,
                     gap_closed=(acc.mean() - plain.mean()) / gap if gap > 0 else float("nan"),
                     teacher_accuracy=teacher.mean(), params=int(grp["params"].iloc[0]),
                     teacher_params=int(grp["teacher_params"].iloc[0]),
                     seconds_mean=grp["seconds"].mean(), seeds=len(acc))
            )  # fmt: skip
    return df, pd.DataFrame(out)


def plot(summary: Any, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(summary["scenario"].unique())
    fig, axes = plt.subplots(1, len(scenarios), figsize=(7 * len(scenarios), 4.5), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        sub = summary[summary["scenario"] == scenario]
        y = 100 * sub["accuracy_mean"].to_numpy()
        err = np.nan_to_num(
            np.stack([y - 100 * sub["ci95_low"].to_numpy(), 100 * sub["ci95_high"].to_numpy() - y])
        )
        colors = [
            "grey" if m == "plain" else ("C3" if b else "C0")
            for m, b in zip(sub["method"], sub["best_combination"], strict=True)
        ]
        ax.bar(sub["method"], y, yerr=err, color=colors, capsize=3)
        ax.axhline(100 * sub["teacher_accuracy"].iloc[0], color="k", ls="--", lw=1, label="teacher")
        ax.set_ylim(max(0.0, y.min() - 3), min(100.0, 100 * sub["teacher_accuracy"].max() + 1.5))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{scenario}: plain fine-tuning (grey) vs KD; red = best combination")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    fig.tight_layout()
    path = out / "distillation.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split = lambda cast: lambda text: [cast(t) for t in text.split(",") if t]  # noqa: E731
    parser.add_argument(
        "--scenarios", type=split(str), default=["pruned70", "pruned70-labels10", "quarter", "tiny"]
    )
    parser.add_argument("--seeds", type=split(int), default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--methods", type=split(str), default=[], help="subset of methods (default: all)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--recovery-epochs", type=int, default=10)
    parser.add_argument("--recovery-lr", type=float, default=1e-3)
    parser.add_argument(
        "--labelled-fraction", type=float, default=0.1,
        help="pruned70-labels10: share of the training split that keeps its labels",
    )  # fmt: skip
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/distillation")
    parser.add_argument("--mlflow", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    apply_defaults()

    from hamnet.evaluate.report import to_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df, summary = summarize(run(args))
    df.to_csv(out / "distillation_runs.csv", index=False)
    summary.to_csv(out / "distillation.csv", index=False)
    (out / "distillation.md").write_text(
        "# Knowledge distillation benchmark\n\n"
        f"Digits; seeds {args.seeds}; recovery {args.recovery_epochs} epochs (learning "
        f"rate {args.recovery_lr}) after 70% pruning; pruned70-labels10: "
        f"{args.labelled_fraction:.0%} of the training labels kept, the other inputs an "
        f"unlabelled transfer set for KD, plain fine-tuning on the labelled samples for the "
        f"same number of optimizer steps; fresh students {args.student_epochs} epochs; the "
        "same epochs, "
        "optimizer and seed for every method. p-values: paired t-test over seeds against "
        "plain fine-tuning. gap_closed: (method - plain) / (teacher - plain). The best "
        "combination is picked on validation accuracy.\n\n" + to_markdown(summary) + "\n"
    )
    figure = plot(summary, out)
    print((out / "distillation.md").read_text())
    from hamnet.tracking.tracker import log_benchmark_files

    tables = ("distillation.csv", "distillation.md", "distillation_runs.csv")
    log_benchmark_files(args.mlflow, "distillation", [*(out / name for name in tables), figure])


if __name__ == "__main__":
    main()
