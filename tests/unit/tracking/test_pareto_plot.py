"""The Pareto plot MLflow shows: numbered markers, a key, labels that never overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tracking_helpers import Factory, metrics

from hamnet.core.config import ConstraintsSection, SelectionSection


def _table(tmp_path: Path, figures: list[tuple[str, float, float, float]]) -> Any:
    from hamnet.evaluate.pareto import candidates_table, select

    factory = Factory(tmp_path)
    base = factory.make("baseline", metrics(0.97, 2.0, 4.0))
    cands = [base] + [factory.make(n, metrics(a, ms, mb), base) for n, a, ms, mb in figures]
    selection = select(cands, base, ConstraintsSection(), SelectionSection())
    return candidates_table(cands, selection)


def _label_boxes(fig: Any) -> list[Any]:
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in fig.axes[0].texts]


@pytest.mark.parametrize("spread", [0.0, 0.001, 0.02])
def test_labels_never_overlap_when_accuracies_tie(tmp_path: Path, spread: float) -> None:
    from hamnet.evaluate.report import pareto_plot

    # eleven candidates with the same accuracy and latencies (nearly) on one spot
    figures = [(f"int8-variant-{i}", 0.96, 1.0 + spread * i, 1.0 + i / 10) for i in range(11)]
    fig = pareto_plot(_table(tmp_path, figures), tmp_path / "pareto.png")
    boxes = _label_boxes(fig)
    assert boxes
    for i, box in enumerate(boxes):
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other)
    labelled = sorted(int(n) for t in fig.axes[0].texts for n in t.get_text().split(","))
    assert labelled == list(range(1, 13))  # every candidate numbered exactly once
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


def test_key_beside_the_plot_names_every_number(tmp_path: Path) -> None:
    from hamnet.evaluate.report import key_lines, pareto_plot, plot_points

    df = _table(tmp_path, [("fast", 0.965, 0.5, 1.0), ("tied", 0.965, 0.5, 1.0)])
    points = plot_points(df)
    assert points is not None
    lines = key_lines(points)
    assert lines[0].split()[:2] == ["#", "candidate"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["1", "baseline"],
        ["2", "fast"],
        ["3", "tied"],
    ]
    assert "recommended" in lines[2] or "recommended" in lines[3]
    fig = pareto_plot(df)
    key_text = fig.axes[1].texts[0].get_text()
    assert "baseline" in key_text and "tied" in key_text
    assert [t.get_text() for t in fig.axes[0].texts] == ["1", "2,3"]  # one spot, one label
