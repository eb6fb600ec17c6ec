"""Small distilled HAMNet students: which recipe brings them within 1 point of the teacher.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/students.py
        [--config configs/peers.yaml] [--recipes shallow-base,shallow-fm-mixup,...]
        [--seeds 0,1,2] [--work .hamnet/students-work] [--out benchmarks/results/students]

The teacher is the baseline of ``--config`` (``model.hamnet`` trained with
``stages.train`` and the config's seed on its data split), trained once and cached in
``--work``. Every recipe (a student shape + the distill settings the pipeline's
``stages.distill`` takes: loss terms, ``ce_weight``, ``student_train``) is then trained
once per seed, through :func:`hamnet.compress.distill.train.distill_model`, the function the
pipeline's distill stage calls. Runs use one thread.

Results are merged into ``students.csv`` (one row per recipe x seed; rerunning a recipe
replaces its rows) and ``students.md`` is rewritten from all rows: validation and test
accuracy (mean and per seed), parameters, FP32 size and seconds. The recipe to use is
chosen on the VALIDATION mean (ties: fewer parameters, then less time); test accuracy is
reported for it, so the choice does not peek at the test split.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hamnet.core.env import apply_defaults

SOFT_REL = [
    {"method": "soft", "weight": 1.0, "temperature": 4.0},
    {"method": "relational", "weight": 1.0},
]
SHALLOW = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "token_size": 8, "dropout_rate": 0.1}
QUARTER = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "token_size": 8, "dropout_rate": 0.1}
PEERS_TRAIN = {"epochs": 100, "patience": 20, "label_smoothing": 0.1}


def _fm(epochs: int, **extra: Any) -> dict[str, Any]:
    """Function-matching student training: mixup on every batch, no early stop cut-off."""
    return {
        "epochs": epochs,
        "patience": epochs,
        "augment": "mixup",
        "mixup_alpha": 1.0,
        "learning_rate": 2e-3,
        "warmup_epochs": 5,
        **extra,
    }


def _soft(t: float) -> list[dict[str, Any]]:
    return [{"method": "soft", "weight": 1.0, "temperature": t}]


@dataclass(frozen=True)
class Recipe:
    """A student shape and the distill-stage settings that train it."""

    name: str
    student: dict[str, Any]
    methods: list[dict[str, Any]]
    ce_weight: float
    train: dict[str, Any]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _shallow(**changes: Any) -> dict[str, Any]:
    return {**SHALLOW, **changes}


def _one(hidden: int, **changes: Any) -> dict[str, Any]:
    """A one-token student: all 64 features in one token, so attention is a linear map."""
    return _shallow(hidden_size=hidden, num_heads=1, token_size=64, dropout_rate=0.0, **changes)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("shallow-peers", SHALLOW, SOFT_REL, 0.5, PEERS_TRAIN,
               "earlier peers.yaml: soft T4 + relational, ce 0.5, 100 ep, patience 20"),
        Recipe("shallow-ce", SHALLOW, [{"method": "soft", "weight": 0.0}], 1.0,
               {"epochs": 300, "patience": 300, "label_smoothing": 0.1},
               "no distillation: cross-entropy only, 300 ep"),
        Recipe("shallow-fm300-t1", _shallow(dropout_rate=0.0), _soft(1.0), 0.0, _fm(300),
               "function matching: mixup(1.0), teacher live, pure KD T1, 300 ep, dropout 0"),
        Recipe("shallow-fm300-t2", _shallow(dropout_rate=0.0), _soft(2.0), 0.0, _fm(300),
               "as fm300-t1 with T2"),
        Recipe("shallow-fm300-t4", _shallow(dropout_rate=0.0), _soft(4.0), 0.0, _fm(300),
               "as fm300-t1 with T4"),
        Recipe("shallow-fm300-cutmix-t2", _shallow(dropout_rate=0.0), _soft(2.0), 0.0,
               {**_fm(300), "augment": "cutmix"}, "as fm300-t2 with cutmix (whole tokens)"),
        Recipe("shallow-fm300-t2-ce", _shallow(dropout_rate=0.0), _soft(2.0), 0.1, _fm(300),
               "as fm300-t2 plus 0.1 x mixed cross-entropy"),
        Recipe("shallow-fm300-t2-d01", SHALLOW, _soft(2.0), 0.0, _fm(300),
               "as fm300-t2 with dropout 0.1"),
        Recipe("shallow-fm300-t2-tok16", _shallow(dropout_rate=0.0, token_size=16), _soft(2.0),
               0.0, _fm(300), "as fm300-t2 with token_size 16 (4 tokens)"),
        Recipe("shallow-fm300-t2-ffn4", _shallow(dropout_rate=0.0, ffn_ratio=4.0), _soft(2.0),
               0.0, _fm(300), "as fm300-t2 with ffn_ratio 4"),
        Recipe("shallow-fm300-t2-lr5e-3", _shallow(dropout_rate=0.0), _soft(2.0), 0.0,
               _fm(300, learning_rate=5e-3), "as fm300-t2 with lr 5e-3"),
        Recipe("shallow-fm300-t2-wd0", _shallow(dropout_rate=0.0), _soft(2.0), 0.0,
               _fm(300, weight_decay=0.0), "as fm300-t2 without weight decay"),
        Recipe("shallow-fm1000-t2", _shallow(dropout_rate=0.0), _soft(2.0), 0.0, _fm(1000),
               "as fm300-t2 for 1000 epochs"),
        Recipe("shallow-fm100-t2", _shallow(dropout_rate=0.0), _soft(2.0), 0.0, _fm(100),
               "as fm300-t2 for 100 epochs (is the long schedule needed?)"),
        Recipe("shallow16-fm300-t2", _shallow(hidden_size=16, dropout_rate=0.0), _soft(2.0),
               0.0, _fm(300), "as fm300-t2 with hidden 16"),
        Recipe("shallow28-fm300-t1", _shallow(hidden_size=28, dropout_rate=0.0), _soft(1.0),
               0.0, _fm(300), "as fm300-t1 with hidden 28 (>= 8x fewer parameters)"),
        Recipe("shallow24-fm300-t1", _shallow(hidden_size=24, dropout_rate=0.0), _soft(1.0),
               0.0, _fm(300), "as fm300-t1 with hidden 24"),
        Recipe("one24-fm300-t1", _one(24), _soft(1.0), 0.0, _fm(300),
               "as fm300-t1 over ONE token of 64 features (a residual MLP), hidden 24"),
        Recipe("one32-fm300-t1", _one(32), _soft(1.0), 0.0, _fm(300),
               "as fm300-t1 over one token, hidden 32"),
        Recipe("one24x2-fm300-t1", _one(24, num_layers=2), _soft(1.0), 0.0, _fm(300),
               "as fm300-t1 over one token, hidden 24, two blocks"),
        Recipe("one32-fm300-t2", _one(32), _soft(2.0), 0.0, _fm(300),
               "as one32-fm300-t1 with T2"),
        Recipe("one32-fm1000-t1", _one(32), _soft(1.0), 0.0, _fm(1000),
               "as one32-fm300-t1 for 1000 epochs"),
        Recipe("one40-ffn1-fm300-t1", _one(40, ffn_ratio=1.0), _soft(1.0), 0.0, _fm(300),
               "as one32-fm300-t1 with hidden 40 and an FFN as wide (ffn_ratio 1)"),
        Recipe("one32-relu-fm300-t1", _one(32, activation="relu"), _soft(1.0), 0.0, _fm(300),
               "as one32-fm300-t1 with ReLU"),
        Recipe("quarter-peers", QUARTER, SOFT_REL, 0.5, PEERS_TRAIN,
               "the earlier configs/peers.yaml recipe, quarter student"),
        Recipe("quarter-fm300-t2", {**QUARTER, "dropout_rate": 0.0}, _soft(2.0), 0.0, _fm(300),
               "function matching for the quarter student (as shallow-fm300-t2)"),
        Recipe("quarter-fm300-t1", {**QUARTER, "dropout_rate": 0.0}, _soft(1.0), 0.0, _fm(300),
               "function matching for the quarter student (as shallow-fm300-t1)"),
    ]
}  # fmt: skip

FIELDS = [
    "recipe", "seed", "val_accuracy", "test_accuracy", "params", "size_kb", "seconds",
    "epochs_run", "best_epoch", "teacher_val_accuracy", "teacher_test_accuracy",
    "teacher_params", "teacher_size_kb",
]  # fmt: skip


def _teacher(config: Any, dataset: Any, work: Path) -> Any:
    """The config's baseline, trained once and cached under ``work``."""
    from hamnet.models import HAMNet, HAMNetConfig, load_checkpoint
    from hamnet.training.trainer import set_seed, train_model

    path = work / f"teacher-{config.name}-seed{config.seed}.pt"
    if path.is_file():
        return load_checkpoint(path)
    model_cfg = HAMNetConfig.from_section(
        config.model.hamnet, input_size=dataset.num_features, num_classes=dataset.num_classes
    )
    set_seed(config.seed)
    model = HAMNet(model_cfg)
    train_model(
        model, dataset, config.stages.train, seed=config.seed, checkpoint_path=path,
        progress=False,
    )  # fmt: skip
    return model


def _size_kb(model: Any) -> float:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1024


def run_recipe(recipe: Recipe, seed: int, teacher: Any, dataset: Any) -> dict[str, Any]:
    """Train one student with ``recipe`` and ``seed``; its accuracies, size and time."""
    from hamnet.compress.distill.train import distill_model
    from hamnet.core.config import HAMNetSection, TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig, count_parameters
    from hamnet.training.trainer import evaluate_accuracy, set_seed

    model_cfg = HAMNetConfig.from_section(
        HAMNetSection(**recipe.student),
        input_size=dataset.num_features,
        num_classes=dataset.num_classes,
    )
    set_seed(seed)
    student = HAMNet(model_cfg)
    start = time.perf_counter()
    result = distill_model(
        student, [teacher], dataset, recipe.methods, TrainStageConfig(**recipe.train),
        ce_weight=recipe.ce_weight, seed=seed, progress=False, **recipe.extra,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "recipe": recipe.name,
        "seed": seed,
        "val_accuracy": evaluate_accuracy(student, dataset.x_val, dataset.y_val),
        "test_accuracy": evaluate_accuracy(student, dataset.x_test, dataset.y_test),
        "params": count_parameters(student),
        "size_kb": round(_size_kb(student), 1),
        "seconds": round(seconds, 1),
        "epochs_run": result.train.epochs_run,
        "best_epoch": result.train.best_epoch,
    }


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_report(rows: list[dict[str, Any]], out: Path) -> None:
    """Write ``students.csv`` and ``students.md`` from every row."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "students.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_recipe.setdefault(str(row["recipe"]), []).append(row)
    teacher_val = float(rows[0]["teacher_val_accuracy"])
    teacher_test = float(rows[0]["teacher_test_accuracy"])
    sized = [r for r in rows if r.get("teacher_size_kb") not in (None, "")]
    teacher_kb = float(sized[0]["teacher_size_kb"]) if sized else float("nan")
    teacher_params = int(sized[0]["teacher_params"]) if sized else 0
    summary: list[dict[str, Any]] = []
    for name, group in by_recipe.items():
        group.sort(key=lambda r: int(r["seed"]))
        val = [float(r["val_accuracy"]) for r in group]
        test = [float(r["test_accuracy"]) for r in group]
        summary.append(
            {
                "name": name,
                "seeds": [int(r["seed"]) for r in group],
                "val": val,
                "test": test,
                "params": int(group[0]["params"]),
                "size_kb": float(group[0]["size_kb"]),
                "seconds": float(np.mean([float(r["seconds"]) for r in group])),
                "epochs": ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in group),
            }
        )
    lines = [
        "# Distilled HAMNet students (digits)",
        "",
        f"Teacher: the peers baseline, val {teacher_val:.2%}, test {teacher_test:.2%}, "
        f"{teacher_params} params, {teacher_kb:.1f} KB (FP32 state_dict). "
        "Test set 360 samples (1 sample = 0.28 pt), validation 270. One thread per run. "
        "Choose on validation, read test.",
        "",
        "| recipe | student | val mean | test mean | test drop pt | val per seed | "
        "test per seed | params | FP32 KB | x smaller | s/run | best/run epochs | what |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    order = sorted(
        summary, key=lambda s: (-round(float(np.mean(s["val"])), 6), s["params"], s["seconds"])
    )
    for s in order:
        recipe = RECIPES.get(s["name"])
        shape = recipe.student if recipe else {}
        student = (
            f"h{shape.get('hidden_size')} L{shape.get('num_layers')} "
            f"heads{shape.get('num_heads')} tok{shape.get('token_size')} "
            f"ffn{shape.get('ffn_ratio', 2.0)} drop{shape.get('dropout_rate')}"
            if shape
            else "?"
        )
        lines.append(
            f"| {s['name']} | {student} | {np.mean(s['val']):.2%} | {np.mean(s['test']):.2%} | "
            f"{(teacher_test - float(np.mean(s['test']))) * 100:.2f} | "
            f"{' / '.join(f'{v:.2%}' for v in s['val'])} | "
            f"{' / '.join(f'{v:.2%}' for v in s['test'])} | {s['params']} | "
            f"{s['size_kb']:.1f} | {teacher_kb / s['size_kb']:.1f} | {s['seconds']:.0f} | "
            f"{s['epochs']} | "
            f"{recipe.note if recipe else ''} |"
        )
    for prefix in ("shallow", "quarter"):
        group = [s for s in summary if s["name"].startswith(prefix) and len(s["seeds"]) >= 3]
        if not group:
            continue
        best = max(
            group, key=lambda s: (round(float(np.mean(s["val"])), 6), -s["params"], -s["seconds"])
        )
        lines += [
            "",
            f"Best {prefix} recipe on validation (>= 3 seeds): **{best['name']}**, val "
            f"{np.mean(best['val']):.2%}, test {np.mean(best['test']):.2%} "
            f"(drop against the teacher "
            f"{(teacher_test - float(np.mean(best['test']))) * 100:+.2f} pt).",
        ]
    (out / "students.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run the chosen recipes x seeds and rewrite the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/peers.yaml")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default=".hamnet/students-work")
    parser.add_argument("--out", default="benchmarks/results/students")
    args = parser.parse_args()
    apply_defaults()

    import torch

    torch.set_num_threads(1)
    from hamnet.core.config import load_config
    from hamnet.models import count_parameters
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import evaluate_accuracy

    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        raise SystemExit(f"recipes must be among {list(RECIPES)}, but got {unknown}")
    config = load_config(args.config)
    dataset = load_dataset(config.data, Path(args.config).resolve().parent.parent)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = _teacher(config, dataset, work)
    teacher_val = evaluate_accuracy(teacher, dataset.x_val, dataset.y_val)
    teacher_test = evaluate_accuracy(teacher, dataset.x_test, dataset.y_test)
    teacher_params, teacher_kb = count_parameters(teacher), round(_size_kb(teacher), 1)
    print(f"teacher val {teacher_val:.4f} test {teacher_test:.4f}", flush=True)

    out = Path(args.out)
    rows = _read_rows(out / "students.csv")
    for name in args.recipes.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_recipe(RECIPES[name], seed, teacher, dataset)
            row["teacher_val_accuracy"] = teacher_val
            row["teacher_test_accuracy"] = teacher_test
            row["teacher_params"] = teacher_params
            row["teacher_size_kb"] = teacher_kb
            rows = [r for r in rows if (r["recipe"], int(r["seed"])) != (name, seed)] + [row]
            print(
                f"{name} seed {seed}: val {row['val_accuracy']:.4f} test "
                f"{row['test_accuracy']:.4f} ({row['seconds']} s, best epoch "
                f"{row['best_epoch']}/{row['epochs_run']})",
                flush=True,
            )
            write_report(rows, out)


if __name__ == "__main__":
    main()
