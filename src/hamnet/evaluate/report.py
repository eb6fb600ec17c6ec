"""Human-readable reports of a run's candidates: console table, Markdown, CSV, plot.

Every function here takes the table made by :func:`hamnet.evaluate.pareto.candidates_table`, so
the console, the files and MLflow show the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.evaluate.pareto import selection_message

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from rich.console import Console

    from hamnet.evaluate.pareto import Selection

MARKDOWN_COLUMNS: tuple[str, ...] = (
    "name",
    "parent",
    "stage",
    "runtime",
    "precision",
    "accuracy",
    "accuracy_drop",
    "latency_p50_ms",
    "latency_p90_ms",
    "throughput_sps",
    "size_mb",
    "size_ratio",
    "latency_ratio",
    "on_front",
    "meets_constraints",
    "recommended",
    "violations",
)
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
        drop = _num(row["accuracy_drop"])
        table.add_row(
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
            style=style,
        )
    console.print(table)
    console.print(
        Text(
            "drop: accuracy points lost vs the baseline; ×small, ×fast: baseline / candidate; "
            "★ on the Pareto front; ok: meets the constraints; ▶ recommended",
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
    """Plot accuracy against latency p50, marker area proportional to size.

    The Pareto front (accuracy vs latency) is drawn as a step line, front members have a
    dark edge, the recommended candidate is ringed in red, the baseline is a square and
    rejected candidates are grey crosses. The x axis is logarithmic when latencies span
    more than 10x. Drawn with the Agg canvas (no display, no pyplot state).

    Args:
        df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
        path: Where to save a PNG (not saved when None).

    Returns:
        The figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    data = df[df["latency_p50_ms"].notna() & df["accuracy"].notna()]
    if data.empty:
        ax.text(0.5, 0.5, "no measured candidate", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return fig

    latency = data["latency_p50_ms"].astype(float)
    accuracy = 100 * data["accuracy"].astype(float)
    size = data["size_mb"].astype(float).fillna(0.0)
    max_size = float(size.max()) or 1.0

    def area(mb: float) -> float:
        return 30.0 + 470.0 * mb / max_size

    rejected = data["rejected"].notna() & (data["rejected"].astype(str) != "")
    on_front = data["on_front"].astype(bool)
    baseline = data["is_baseline"].astype(bool) if "is_baseline" in data else on_front & False
    ordinary = ~rejected & ~baseline
    ax.scatter(
        latency[ordinary],
        accuracy[ordinary],
        s=[area(v) for v in size[ordinary]],
        c=["tab:blue" if f else "tab:cyan" for f in on_front[ordinary]],
        edgecolors=["black" if f else "none" for f in on_front[ordinary]],
        alpha=0.75,
        zorder=3,
    )
    if baseline.any():
        ax.scatter(
            latency[baseline],
            accuracy[baseline],
            s=[area(v) for v in size[baseline]],
            marker="s",
            c="tab:orange",
            edgecolors="black",
            alpha=0.8,
            zorder=3,
        )
    if rejected.any():
        ax.scatter(latency[rejected], accuracy[rejected], s=60, marker="x", c="grey", zorder=3)

    step = _front_2d(data[on_front])
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

    recommended = data["recommended"].astype(bool)
    if recommended.any():
        ax.scatter(
            latency[recommended],
            accuracy[recommended],
            s=[area(v) * 1.8 + 80 for v in size[recommended]],
            facecolors="none",
            edgecolors="red",
            linewidths=2.0,
            zorder=4,
        )

    names = [str(n) for n in data["name"]]
    greyed = [bool(r) for r in rejected]
    for name, x, y, grey in zip(names, latency, accuracy, greyed, strict=True):
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(6, 5),
            fontsize=7.5,
            color="grey" if grey else "black",
        )

    lo, hi = float(latency.min()), float(latency.max())
    if lo > 0 and hi / lo > 10:
        ax.set_xscale("log")
    ax.set_xlabel(
        "latency p50 at batch 1 (ms)" + (", log scale" if ax.get_xscale() == "log" else "")
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Candidates: accuracy vs latency (marker area ∝ size)")
    ax.grid(True, alpha=0.3)

    handles = [
        Line2D([], [], ls="", marker="o", color="tab:blue", mec="black", label="on Pareto front"),
        Line2D([], [], ls="", marker="o", color="tab:cyan", label="dominated"),
        Line2D([], [], ls="", marker="s", color="tab:orange", mec="black", label="baseline"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="red", mew=2, label="recommended"),
        Line2D([], [], ls="", marker="x", color="grey", label="rejected"),
        Line2D([], [], color="tab:blue", alpha=0.6, label="front (accuracy vs latency)"),
    ]
    for mb in _size_examples(max_size):
        size_marker = math.sqrt(area(mb))
        handles.append(Line2D([], [], ls="", marker="o", color="lightgrey", markersize=size_marker))
        handles[-1].set_label(f"{mb:g} MB")
    ax.legend(
        handles=handles,
        fontsize=7.5,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        labelspacing=1.1,
        borderaxespad=0.0,
    )
    fig.tight_layout()
    _save(fig, path)
    return fig


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
    text = (
        "# hamnet candidates\n\n"
        f"{selection.message}\n\n"
        f"Pareto front (accuracy, latency p50, size): {', '.join(front) or 'none'}. "
        "Accuracy and drop are fractions (0.01 = one point); ratios are baseline / "
        "candidate (higher is better).\n\n"
        f"{to_markdown(df, MARKDOWN_COLUMNS)}\n"
    )
    files["markdown"].write_text(text, encoding="utf-8")
    pareto_plot(df, files["plot"])
    return files
