"""Human-readable reports of a run's candidates: console table, Markdown, CSV, plot.

Every function here takes the table made by :func:`hamnet.evaluate.pareto.candidates_table`, so
the console, the files and MLflow show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.evaluate.fidelity import describe_accuracy_kind
from hamnet.evaluate.pareto import TABLE_COLUMNS, selection_message

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.text import Text

    from hamnet.evaluate.pareto import Selection

_DETAIL_COLUMNS = frozenset(
    {
        "id",
        "method",
        "accuracy_kind",
        "params",
        "flops",
        "peak_memory_mb",
        "is_baseline",
        "rejected",
        "method_params",
    }
)
"""Columns of the candidates table left out of the Markdown (ids, lineage details, raw counts)."""

MARKDOWN_COLUMNS: tuple[str, ...] = tuple(c for c in TABLE_COLUMNS if c not in _DETAIL_COLUMNS)
"""Columns :func:`write_report` puts in ``candidates.md`` (the CSV has them all)."""


def _num(value: Any) -> float | None:
    """``value`` as a finite-or-inf float, or None when missing."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    number = _num(value)
    if number is None:
        return "-"
    if math.isinf(number):
        return "inf"
    return f"{number:{spec}}{suffix}"


def score_meaning(df: pd.DataFrame) -> str:
    """What the table's accuracy column is, in words, e.g. ``"mean cosine similarity to
    the original model's outputs, on the validation split"``.

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.

    Returns:
        The metric's meaning (several, joined, if the rows differ), and the split.
    """
    kinds: list[str] = []
    if "accuracy_kind" in df.columns:
        kinds = [k for k in dict.fromkeys(df["accuracy_kind"]) if _text(k) not in ("", "none")]
    meaning = "; ".join(describe_accuracy_kind(str(k)) for k in kinds) or "top-1 accuracy"
    return f"{meaning}, on the validation split"


def held_out_scores_line(df: pd.DataFrame) -> str | None:
    """The test-split scores of the table's rows that have one (recommended, baseline).

    Returns:
        E.g. ``"test split (scored once, after selection): ort-int8 96.94% (validation
        97.22%), baseline 97.10% (validation 97.50%)"``; None when no row has one.
    """
    if "test_accuracy" not in df.columns:
        return None
    rows = df[df["test_accuracy"].notna()]
    if rows.empty:
        return None
    parts = []
    for _, row in rows.iterrows():
        cosine = row.get("accuracy_kind") == "mean_cosine_similarity"
        spec, factor, unit = (".4f", 1.0, "") if cosine else (".2f", 100.0, "%")
        test = _fmt(_scaled(row["test_accuracy"], factor), spec, unit)
        validation = _fmt(_scaled(row["accuracy"], factor), spec, unit)
        parts.append(f"{row['name']} {test} (validation {validation})")
    return "test split (scored once, after selection): " + ", ".join(parts)


def _message_from_table(df: pd.DataFrame, recommended_name: str | None) -> str:
    rows = df[df["name"] == recommended_name] if recommended_name else df.iloc[0:0]
    if rows.empty:
        return selection_message(None, False, [])
    row = rows.iloc[0]
    violations = [v for v in _text(row["violations"]).split("; ") if v]
    return selection_message(recommended_name, bool(row["meets_constraints"]), violations)


def render_table(
    df: pd.DataFrame,
    *,
    title: str,
    recommended_name: str | None,
    console: Console | None = None,
    message: str | None = None,
) -> None:
    """Print the candidates as a rich table, then the selection message.

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
        title: The table's title.
        recommended_name: Name of the recommended candidate (highlighted).
        console: Where to print (a new stdout console when None).
        message: The selection message; derived from the table when None.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("▶", width=1, no_wrap=True)
    table.add_column("candidate", overflow="fold", ratio=1)
    headers = ("acc %", "drop", "p50 ms", "thru/s", "MB", "×small", "×fast")
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True, min_width=max(len(header), 5))
    table.add_column("★", justify="center", no_wrap=True, min_width=1)
    table.add_column("ok", justify="center", no_wrap=True, min_width=2)
    for _, row in df.iterrows():
        is_recommended = row["name"] == recommended_name
        rejected = _text(row.get("rejected"))
        style = "bold green" if is_recommended else "dim" if rejected else None
        table.add_row(*_table_cells(row, is_recommended), style=style)
    console.print(table)
    console.print(
        Text(
            f"acc: {score_meaning(df)}; drop: points lost vs the baseline; ×small, ×fast: "
            "baseline / candidate; ★ on the Pareto front; ok: meets the constraints; "
            "▶ recommended",
            style="dim",
        )
    )
    for _, row in df.iterrows():
        reason = _text(row.get("rejected"))
        if reason:
            console.print(Text(f"  {row['name']} rejected: {reason}", style="dim"))
    text = message or _message_from_table(df, recommended_name)
    ok = bool(df.loc[df["name"] == recommended_name, "meets_constraints"].any())
    console.print(Text(text, style="bold green" if ok else "bold yellow"))
    tested = held_out_scores_line(df)
    if tested and message is None:
        console.print(Text(tested))


def _table_cells(row: pd.Series, is_recommended: bool) -> list[str | Text]:
    """One candidate's cells in the console table, formatted."""
    from rich.text import Text

    drop = _num(row["accuracy_drop"])
    return [
        "▶" if is_recommended else "",
        Text(str(row["name"])),
        _fmt(_scaled(row["accuracy"], 100), ".2f"),
        _fmt(None if drop is None else 100 * drop, "+.2f"),
        _fmt(row["latency_p50_ms"], ".3f"),
        _fmt(row["throughput_sps"], ",.0f"),
        _fmt(row["size_mb"], ".3f"),
        _fmt(row["size_ratio"], ".2f", "×"),
        _fmt(row["latency_ratio"], ".2f", "×"),
        "★" if bool(row["on_front"]) else "",
        Text("✓", style="green") if bool(row["meets_constraints"]) else Text("✗", style="red"),
    ]


def _text(value: Any) -> str:
    """A string cell as text; "" for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _scaled(value: Any, factor: float) -> float | None:
    number = _num(value)
    return None if number is None else number * factor


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    if hasattr(value, "item"):  # numpy scalar
        return _markdown_cell(value.item())
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, columns: list[str] | tuple[str, ...] | None = None) -> str:
    """Format a table as GitHub-flavoured Markdown (no ``tabulate`` needed).

    Numbers are right-aligned with 3-4 significant decimals; booleans read ``yes`` or
    nothing; missing values are blank.

    Args:
        df: Any data frame.
        columns: Columns to show, in order (all when None; unknown names are skipped).

    Returns:
        The Markdown table, one line per row, without a trailing newline.
    """
    import pandas as pd

    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols
    ]
    header = "| " + " | ".join(str(c) for c in cols) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    lines = [header, rule]
    for row in df[cols].itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
    return "\n".join(lines)


def pareto_plot(df: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Plot accuracy against latency p50, marker area proportional to size, with a key.

    The Pareto front (accuracy vs latency) is drawn as a step line, front members have a
    dark edge, the recommended candidate is ringed in red, the baseline is a square and
    rejected candidates are grey crosses. The x axis is logarithmic when latencies span
    more than 10x. Markers carry numbers, not names: candidates that fall on the same
    spot share one label (``"2,5"``), labels are moved until none overlaps another, and
    the key beside the plot gives each number's name and figures. Drawn with the Agg
    canvas (no display, no pyplot state).

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
        path: Where to save a PNG (not saved when None).

    Returns:
        The figure; its first axes is the plot, its second the key.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = plot_points(df)
    if points is None:
        fig = Figure(figsize=(9.5, 5.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no measured candidate", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return fig
    rows = len(points.data)
    fig = Figure(figsize=(14.0, max(6.0, 1.6 + 0.2 * rows)), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        1, 2, width_ratios=(3.0, 2.2), wspace=0.05, left=0.06, right=0.99, top=0.93, bottom=0.2
    )
    ax = fig.add_subplot(grid[0, 0])
    key = fig.add_subplot(grid[0, 1])
    _draw_markers(ax, points)
    _style_axes(ax, points)
    _draw_legend(ax, points.max_size)
    _draw_key(key, points)
    ax.margins(x=0.06, y=0.15)  # room around the markers for their numbers
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # freeze the limits: labels are placed in display space
    ax.set_ylim(ax.get_ylim())
    _label_points(ax, points)
    _save(fig, path)
    return fig


@dataclass(frozen=True)
class PlotPoints:
    """The measured rows of a candidates table, laid out for :func:`pareto_plot`.

    Attributes:
        data: The rows with a latency and an accuracy.
        latency: Latency p50 (ms), the x axis.
        accuracy: Accuracy in percent, the y axis.
        size: Size in MB (0 when missing), the marker area.
        max_size: The largest size (1 when every size is 0), the full marker area.
        rejected: Rows of rejected candidates.
        on_front: Rows on the Pareto front.
        baseline: The baseline's row.
        recommended: The recommended candidate's row.
    """

    data: pd.DataFrame
    latency: pd.Series
    accuracy: pd.Series
    size: pd.Series
    max_size: float
    rejected: pd.Series
    on_front: pd.Series
    baseline: pd.Series
    recommended: pd.Series

    @property
    def ordinary(self) -> pd.Series:
        """Rows neither rejected nor the baseline."""
        return ~self.rejected & ~self.baseline

    def areas(self, mask: pd.Series) -> list[float]:
        """Marker areas of the rows in ``mask``."""
        return [marker_area(mb, self.max_size) for mb in self.size[mask]]


def plot_points(df: pd.DataFrame) -> PlotPoints | None:
    """Lay out the measured rows of a candidates table (None when none was measured).

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.

    Returns:
        The points, or None when no row has both a latency and an accuracy.
    """
    data = df[df["latency_p50_ms"].notna() & df["accuracy"].notna()]
    if data.empty:
        return None
    size = data["size_mb"].astype(float).fillna(0.0)
    on_front = data["on_front"].astype(bool)
    return PlotPoints(
        data=data,
        latency=data["latency_p50_ms"].astype(float),
        accuracy=100 * data["accuracy"].astype(float),
        size=size,
        max_size=float(size.max()) or 1.0,
        rejected=data["rejected"].notna() & (data["rejected"].astype(str) != ""),
        on_front=on_front,
        baseline=data["is_baseline"].astype(bool) if "is_baseline" in data else on_front & False,
        recommended=data["recommended"].astype(bool),
    )


def marker_area(size_mb: float, max_size: float) -> float:
    """Marker area (points²) of a model of ``size_mb``: 30 for nothing, 500 for ``max_size``."""
    return 30.0 + 470.0 * size_mb / max_size


def use_log_scale(latency_min: float, latency_max: float) -> bool:
    """Whether latencies from ``latency_min`` to ``latency_max`` span more than 10x."""
    return latency_min > 0 and latency_max / latency_min > 10


def _scatter(ax: Axes, points: PlotPoints, mask: pd.Series, **style: Any) -> None:
    ax.scatter(points.latency[mask], points.accuracy[mask], **style)


def _draw_markers(ax: Axes, points: PlotPoints) -> None:
    """Candidates, baseline, rejected ones, the front's staircase and the recommended ring."""
    ordinary, front = points.ordinary, points.on_front
    _scatter(
        ax,
        points,
        ordinary,
        s=points.areas(ordinary),
        c=["tab:blue" if f else "tab:cyan" for f in front[ordinary]],
        edgecolors=["black" if f else "none" for f in front[ordinary]],
        alpha=0.75,
        zorder=3,
    )
    if points.baseline.any():
        _scatter(
            ax,
            points,
            points.baseline,
            s=points.areas(points.baseline),
            marker="s",
            c="tab:orange",
            edgecolors="black",
            alpha=0.8,
            zorder=3,
        )
    if points.rejected.any():
        _scatter(ax, points, points.rejected, s=60, marker="x", c="grey", zorder=3)
    step = _front_2d(points.data[front])
    if len(step) > 0:
        ax.step(
            step["latency_p50_ms"].astype(float),
            100 * step["accuracy"].astype(float),
            where="post",
            color="tab:blue",
            lw=1.2,
            alpha=0.6,
            zorder=2,
        )
    if points.recommended.any():
        _scatter(
            ax,
            points,
            points.recommended,
            s=[area * 1.8 + 80 for area in points.areas(points.recommended)],
            facecolors="none",
            edgecolors="red",
            linewidths=2.0,
            zorder=4,
        )


LABEL_OFFSETS: tuple[tuple[float, float], ...] = tuple(
    (radius * dx, radius * dy)
    for radius in (7.0, 14.0, 22.0, 32.0, 44.0, 58.0, 74.0, 92.0)
    for dx, dy in ((1, 0.6), (1, -1.4), (-1, 0.6), (-1, -1.4), (0, 1.3), (0, -2.2))
)
"""Where a marker's number may go (points from the marker), nearest first."""

SAME_SPOT_PX = 9.0
"""Markers closer than this (display pixels) share one label."""


def marker_numbers(points: PlotPoints) -> list[int]:
    """The number of each plotted row (1, 2, ... in table order): its label and key entry."""
    return list(range(1, len(points.data) + 1))


def _label_points(ax: Axes, points: PlotPoints) -> None:
    """Number the markers; markers on one spot share a label; no label overlaps another.

    Each label tries :data:`LABEL_OFFSETS` in turn and takes the first place where it
    overlaps no marker and no label placed before it (and stays inside the axes); far
    from its marker, a thin line leads back to it.
    """
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    xy = ax.transData.transform(list(zip(points.latency, points.accuracy, strict=True)))
    scale = ax.figure.dpi / 72.0
    radii = [scale * math.sqrt(marker_area(mb, points.max_size)) / 2 for mb in points.size]
    markers = [
        Bbox.from_extents(px - r, py - r, px + r, py + r)
        for (px, py), r in zip(xy, radii, strict=True)
    ]
    greyed = [bool(r) for r in points.rejected]
    spots: list[tuple[tuple[float, float], list[int], bool]] = []
    for number, (px, py), grey in zip(marker_numbers(points), xy, greyed, strict=True):
        for anchor, numbers, _ in spots:
            if math.hypot(px - anchor[0], py - anchor[1]) < SAME_SPOT_PX:
                numbers.append(number)
                break
        else:
            spots.append(((px, py), [number], grey))
    placed: list[Any] = []
    area = ax.bbox
    for (px, py), numbers, grey in spots:
        data_xy = ax.transData.inverted().transform((px, py))
        text = ",".join(str(n) for n in numbers)
        # nearest free place inside the axes clear of markers, else clear of labels only,
        # else straight above the marker, as high as it takes
        tries = [(offset, "clear") for offset in LABEL_OFFSETS]
        tries += [(offset, "inside") for offset in LABEL_OFFSETS]
        tries += [((0.0, 10.0 * step), "anywhere") for step in range(1, 400)]
        for offset, rule in tries:
            label = _number_label(ax, text, data_xy, offset, grey)
            box = label.get_window_extent(renderer)
            blocked = [*placed, *markers] if rule == "clear" else placed
            inside = area.contains(box.x0, box.y0) and area.contains(box.x1, box.y1)
            if (inside or rule == "anywhere") and not any(box.overlaps(b) for b in blocked):
                placed.append(box)
                break
            label.remove()


def _number_label(ax: Axes, text: str, xy: Any, offset: tuple[float, float], grey: bool) -> Any:
    """One marker label at ``offset`` points from ``xy``; a leader line when far."""
    far = math.hypot(*offset) > 16.0
    return ax.annotate(
        text,
        xy,
        textcoords="offset points",
        xytext=offset,
        fontsize=8,
        fontweight="bold",
        color="grey" if grey else "black",
        ha="left" if offset[0] >= 0 else "right",
        va="center",
        arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if far else None,
        zorder=5,
    )


def key_lines(points: PlotPoints) -> list[str]:
    """The key beside the plot: number, name, accuracy, latency, size and role per row."""
    lines = [f"{'#':>3}  {'candidate':<26} {'acc %':>7} {'p50 ms':>9} {'MB':>8}  role"]
    roles = zip(points.recommended, points.on_front, points.rejected, points.baseline, strict=True)
    for number, name, acc, ms, mb, (rec, front, rejected, base) in zip(
        marker_numbers(points),
        points.data["name"],
        points.accuracy,
        points.latency,
        points.size,
        roles,
        strict=True,
    ):
        role = ", ".join(
            word
            for word, on in (
                ("recommended", rec), ("front", front), ("rejected", rejected), ("baseline", base)
            )
            if on
        )  # fmt: skip
        short = str(name) if len(str(name)) <= 26 else str(name)[:25] + "…"
        lines.append(f"{number:>3}  {short:<26} {acc:>7.2f} {ms:>9.4g} {mb:>8.3g}  {role}")
    return lines


def _draw_key(key: Axes, points: PlotPoints) -> None:
    """The numbered key, in a monospace column right of the plot."""
    key.set_axis_off()
    rows = len(points.data)
    key.text(
        0.0,
        1.0,
        "\n".join(key_lines(points)),
        transform=key.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5 if rows <= 30 else 6.0,
    )


def _style_axes(ax: Axes, points: PlotPoints) -> None:
    """Scale, labels, title and grid."""
    log = use_log_scale(float(points.latency.min()), float(points.latency.max()))
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("latency p50 at batch 1 (ms)" + (", log scale" if log else ""))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Candidates: accuracy vs latency (marker area ∝ size)")
    ax.grid(True, alpha=0.3)


def _draw_legend(ax: Axes, max_size: float) -> None:
    """What the markers mean, with two example sizes, below the axes."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color="tab:blue", mec="black", label="on Pareto front"),
        Line2D([], [], ls="", marker="o", color="tab:cyan", label="dominated"),
        Line2D([], [], ls="", marker="s", color="tab:orange", mec="black", label="baseline"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="red", mew=2, label="recommended"),
        Line2D([], [], ls="", marker="x", color="grey", label="rejected"),
        Line2D([], [], color="tab:blue", alpha=0.6, label="front (accuracy vs latency)"),
    ]
    for mb in _size_examples(max_size):
        size_marker = math.sqrt(marker_area(mb, max_size))
        handles.append(Line2D([], [], ls="", marker="o", color="lightgrey", markersize=size_marker))
        handles[-1].set_label(f"{mb:g} MB")
    ax.legend(
        handles=handles,
        fontsize=7.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=4,
        labelspacing=1.1,
        borderaxespad=0.0,
    )


def _front_2d(front: pd.DataFrame) -> pd.DataFrame:
    """The accuracy-vs-latency staircase of the front (size ignored), by latency."""
    ordered = front.sort_values(["latency_p50_ms", "accuracy"], ascending=[True, False])
    keep, best = [], -math.inf
    for index, acc in zip(ordered.index, ordered["accuracy"].astype(float), strict=True):
        if acc > best:
            keep.append(index)
            best = acc
    return ordered.loc[keep]


def _size_examples(max_size: float) -> list[float]:
    """Two round sizes for the marker-size legend."""
    if max_size <= 0:
        return []
    top = float(f"{max_size:.1g}")
    return sorted({float(f"{top / 10:.1g}"), top})


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")


def write_report(df: pd.DataFrame, selection: Selection, out_dir: str | Path) -> dict[str, Path]:
    """Write ``candidates.csv``, ``candidates.md`` and ``pareto.png`` to ``out_dir``.

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
        selection: The selection the table was made with (its message heads the
            Markdown).
        out_dir: Folder to write to (created when missing).

    Returns:
        The written files under the keys ``csv``, ``markdown`` and ``plot``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": out / "candidates.csv",
        "markdown": out / "candidates.md",
        "plot": out / "pareto.png",
    }
    df.to_csv(files["csv"], index=False)
    front = [str(n) for n in df.loc[df["on_front"].astype(bool), "name"]]
    tested = held_out_scores_line(df)
    text = (
        "# hamnet candidates\n\n"
        f"{selection.message}\n\n"
        f"Accuracy: {score_meaning(df)} (the selection reads it); test_accuracy: the "
        "same metric on the test split, scored once after selection for the recommended "
        f"model and the baseline.{' ' + tested[0].upper() + tested[1:] + '.' if tested else ''}\n\n"
        f"Pareto front (accuracy, latency p50, size): {', '.join(front) or 'none'}. "
        "Accuracy and drop are fractions (0.01 = one point); ratios are baseline / "
        "candidate (higher is better).\n\n"
        f"{to_markdown(df, MARKDOWN_COLUMNS)}\n"
    )
    files["markdown"].write_text(text, encoding="utf-8")
    pareto_plot(df, files["plot"])
    return files
