"""Garbage collection of a run's workdir: keep what matters, bound the rest.

Nightly runs add model files (``artifacts/``), Prefect result-cache entries
(``prefect-results/``), reports and run indexes (``runs/``) to the workdir. :func:`collect`
decides what may go, and deletes it when asked:

- **kept**: artifacts of candidates on the Pareto front or recommended in the last
  ``keep_runs`` finished runs (read from the run indexes ``runs/<run>.json`` that
  :class:`hamnet.pipeline.run.PipelineRun` writes), whatever their age, and every artifact
  a run in progress may be using (stored since it started, or listed in its index);
- **artifacts** of other candidates unused for ``max_age_days`` (a run that uses an
  artifact, cached or not, refreshes its modification time);
- **cache** entries older than ``max_age_days``, and those whose artifact was just
  collected (the flow would recompute such a stage anyway);
- **reports** and **indexes** of runs older than ``max_age_days`` beyond the last
  ``keep_runs``;
- **temp** leftovers of interrupted writes (``_staging/``, ``.put-*``, ``.tmp-*``) older
  than six hours.

The command ``hamnet gc`` shows the plan (``--dry-run``, the default) or applies it
(``--yes``); runs apply it at their end when ``retention.auto_gc`` is on.

Example:
    >>> from hamnet.pipeline.gc import collect
    >>> report = collect(".hamnet", keep_runs=5, max_age_days=14)  # doctest: +SKIP
    >>> report.summary()  # doctest: +SKIP
    'would delete 12 items (48.1 MB): 9 artifact, 3 cache'
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

ItemKind = Literal["artifact", "cache", "report", "index", "temp"]

TEMP_MAX_AGE_SECONDS = 6 * 3600.0
"""Leftovers of interrupted writes younger than this may belong to a live run."""

_DAY = 86400.0


@dataclass(frozen=True)
class GcItem:
    """One file or folder :func:`collect` deletes (or would delete)."""

    kind: ItemKind
    path: Path
    size_bytes: int
    reason: str


@dataclass
class GcReport:
    """What :func:`collect` found.

    Attributes:
        workdir: The workdir collected.
        items: What is (or would be) deleted.
        kept_artifacts: Artifacts kept because a recent run has them on its front or
            recommends them.
        applied: Whether ``items`` were deleted.
    """

    workdir: Path
    items: list[GcItem] = field(default_factory=list)
    kept_artifacts: int = 0
    applied: bool = False

    @property
    def size_bytes(self) -> int:
        """Bytes freed (or that would be freed)."""
        return sum(item.size_bytes for item in self.items)

    def summary(self) -> str:
        """One line: how many items of which kind, how many MB."""
        verb = "deleted" if self.applied else "would delete"
        kinds = Counter(item.kind for item in self.items)
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return (
            f"{verb} {len(self.items)} items ({self.size_bytes / 1e6:.1f} MB)"
            + (f": {parts}" if parts else "")
            + f"; kept {self.kept_artifacts} front/recommended artifacts"
        )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _age_days(path: Path, now: float) -> float:
    return (now - path.stat().st_mtime) / _DAY


def _read_indexes(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Run indexes, newest first; unreadable ones are skipped (a crash mid-write is not
    possible, they are written atomically, but a user may have edited one)."""
    found = []
    for path in runs_dir.glob("*.json") if runs_dir.is_dir() else []:
        try:
            document = json.loads(path.read_text())
            updated = float(document.get("updated", path.stat().st_mtime))
        except (OSError, ValueError, AttributeError):
            continue
        found.append((updated, path, document))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(path, document) for _, path, document in found]


def _cache_references(path: Path) -> bytes:
    """The decoded payload of a Prefect result file (pickled strings appear verbatim)."""
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
        payload = document.get("result") if isinstance(document, dict) else None
        if isinstance(payload, str):
            return base64.b64decode(payload, validate=False) + raw
    except (ValueError, UnicodeDecodeError):
        pass
    return raw


RunIndex = tuple[Path, Mapping[str, Any]]
"""A run index file and its parsed document, as :class:`hamnet.pipeline.run.PipelineRun`
writes it (``status``, ``started``, ``updated``, ``run_name``, ``candidates``)."""


@dataclass(frozen=True)
class RetentionPlan:
    """What the run indexes protect from collection (see :func:`plan_retention`).

    Attributes:
        protected_shas: Artifacts kept whatever their age: on the front or recommended
            in a recent finished run, or listed by a run in progress.
        recent_indexes: Index files of the last ``keep_runs`` finished runs.
        active_indexes: Index files of the runs in progress.
        active_since: When the oldest run in progress started (None when none is).
    """

    protected_shas: frozenset[str]
    recent_indexes: frozenset[Path]
    active_indexes: frozenset[Path]
    active_since: float | None

    def keeps_index(self, path: Path) -> bool:
        """Whether the run index at ``path`` (and its reports) is kept whatever its age."""
        return path in self.recent_indexes or path in self.active_indexes

    def may_be_in_use(self, stored_at: float) -> bool:
        """Whether an artifact stored at ``stored_at`` may belong to a run in progress."""
        return self.active_since is not None and stored_at >= self.active_since - 60


def _artifact_sha(entry: Mapping[str, Any]) -> str:
    return str(entry.get("artifact", {}).get("sha256", ""))


def is_active(document: Mapping[str, Any], now: float) -> bool:
    """Whether a run index belongs to a run in progress: it says ``running`` and was
    updated less than :data:`TEMP_MAX_AGE_SECONDS` ago (older ones crashed)."""
    updated = float(document.get("updated", 0))
    return document.get("status") == "running" and now - updated < TEMP_MAX_AGE_SECONDS


def plan_retention(indexes: Sequence[RunIndex], *, keep_runs: int, now: float) -> RetentionPlan:
    """Decide what the run indexes protect; reads no file.

    The front and recommended artifacts of the ``keep_runs`` newest finished runs are
    protected, and so is every artifact a run in progress lists: it may be using it.

    Args:
        indexes: Run indexes, newest first.
        keep_runs: How many of the newest finished runs keep their artifacts.
        now: The current time (seconds since the epoch).

    Returns:
        The protected artifacts and run indexes.
    """
    recent = [(p, d) for p, d in indexes if d.get("status") == "finished"][:keep_runs]
    active = [(p, d) for p, d in indexes if is_active(d, now)]
    protected = {
        _artifact_sha(entry)
        for _, document in recent
        for entry in document.get("candidates", [])
        if entry.get("on_front") or entry.get("recommended")
    }
    protected.update(
        _artifact_sha(entry) for _, document in active for entry in document.get("candidates", [])
    )
    return RetentionPlan(
        protected_shas=frozenset(protected),
        recent_indexes=frozenset(p for p, _ in recent),
        active_indexes=frozenset(p for p, _ in active),
        active_since=min((float(d.get("started", now)) for _, d in active), default=None),
    )


def _artifact_items(
    store: Path, plan: RetentionPlan, *, keep_runs: int, max_age_days: float, now: float
) -> tuple[list[GcItem], int]:
    """Unprotected artifact folders unused for ``max_age_days``, and how many were kept."""
    items: list[GcItem] = []
    kept = 0
    for folder in sorted(store.glob("??/*")) if store.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        if folder.name in plan.protected_shas:
            kept += 1
            continue
        if plan.may_be_in_use(folder.stat().st_mtime):
            continue
        age = _age_days(folder, now)
        if age > max_age_days:
            reason = (
                f"not on the front nor recommended in the last {keep_runs} runs; "
                f"unused for {age:.1f} days"
            )
            items.append(GcItem("artifact", folder, _size(folder), reason))
    return items, kept


def _temp_items(root: Path, now: float) -> list[GcItem]:
    """Leftovers of interrupted writes older than :data:`TEMP_MAX_AGE_SECONDS`."""
    store = root / "artifacts"
    temps = list(store.glob(".put-*")) + list(store.glob("_staging/*")) if store.is_dir() else []
    temps += [p for p in root.rglob(".tmp-*") if p.is_file()] if root.is_dir() else []
    items = []
    for path in temps:
        age_s = now - path.stat().st_mtime
        if age_s > TEMP_MAX_AGE_SECONDS:
            reason = f"left over by an interrupted write {age_s / 3600:.1f} h ago"
            items.append(GcItem("temp", path, _size(path), reason))
    return items


def _cache_items(
    cache: Path, collected_shas: Sequence[str], *, max_age_days: float, now: float
) -> list[GcItem]:
    """Cache entries older than ``max_age_days`` or naming a collected artifact."""
    needles = [sha.encode() for sha in collected_shas]
    items = []
    for path in sorted(cache.iterdir()) if cache.is_dir() else []:
        if not path.is_file():
            continue
        age = _age_days(path, now)
        if age > max_age_days:
            items.append(GcItem("cache", path, _size(path), f"cache entry {age:.1f} days old"))
        elif needles and any(n in _cache_references(path) for n in needles):
            reason = "its artifact is collected (the stage would be recomputed anyway)"
            items.append(GcItem("cache", path, _size(path), reason))
    return items


def _run_items(
    root: Path, indexes: Sequence[RunIndex], plan: RetentionPlan, *, max_age_days: float, now: float
) -> list[GcItem]:
    """Indexes and reports of runs older than ``max_age_days`` that the plan does not keep."""
    items = []
    for path, document in indexes:
        if plan.keeps_index(path):
            continue
        age = _age_days(path, now)
        if age <= max_age_days:
            continue
        reason = f"run {document.get('run_name')} is {age:.1f} days old, not in the last runs"
        items.append(GcItem("index", path, _size(path), reason))
        reports = root / "reports" / str(document.get("run_name", path.stem))
        if reports.is_dir():
            items.append(GcItem("report", reports, _size(reports), reason))
    return items


def delete_items(items: Sequence[GcItem]) -> None:
    """Delete every item's file or folder (gone ones are skipped)."""
    for item in items:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)


def collect(
    workdir: str | Path,
    *,
    keep_runs: int = 5,
    max_age_days: float = 14.0,
    apply: bool = False,
    now: float | None = None,
) -> GcReport:
    """Find (and with ``apply`` delete) what the workdir no longer needs.

    Args:
        workdir: The run's workdir (``<project>/<config.workdir>``).
        keep_runs: The front and recommended artifacts of this many most recent finished
            runs are always kept.
        max_age_days: Other artifacts, cache entries and old runs' reports unused for
            longer than this go; 0 collects every artifact that is not kept.
        apply: Delete; otherwise only report.
        now: The current time (seconds since the epoch), for tests.

    Returns:
        The items deleted (or to delete) and the bytes they hold.

    Raises:
        ConfigError: If ``keep_runs`` < 1 or ``max_age_days`` < 0.
    """
    if keep_runs < 1:
        raise ConfigError(f"keep_runs must be at least 1, but got {keep_runs}")
    if max_age_days < 0:
        raise ConfigError(f"max_age_days must be >= 0, but got {max_age_days}")
    root = Path(workdir).resolve()
    now = time.time() if now is None else now
    indexes = _read_indexes(root / "runs")
    plan = plan_retention(indexes, keep_runs=keep_runs, now=now)
    artifacts, kept = _artifact_items(
        root / "artifacts", plan, keep_runs=keep_runs, max_age_days=max_age_days, now=now
    )
    collected_shas = [item.path.name for item in artifacts]
    items = [
        *artifacts,
        *_temp_items(root, now),
        *_cache_items(root / "prefect-results", collected_shas, max_age_days=max_age_days, now=now),
        *_run_items(root, indexes, plan, max_age_days=max_age_days, now=now),
    ]
    report = GcReport(workdir=root, items=items, kept_artifacts=kept)
    if apply:
        delete_items(items)
        report.applied = True
    return report


def gc_command(
    config: Annotated[
        Path | None,
        typer.Option(help="Run config: its workdir and retention section are used."),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Workdir to collect (default: the config's, or .hamnet).")
    ] = None,
    keep_runs: Annotated[
        int | None, typer.Option(help="Keep front + recommended artifacts of this many runs.")
    ] = None,
    max_age_days: Annotated[
        float | None,
        typer.Option(help="Collect what was unused this long (0: every artifact not kept)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes/--dry-run", help="Delete, or only show what would go.")
    ] = False,
    base_dir: Annotated[
        Path, typer.Option(help="Project folder relative paths resolve against.")
    ] = Path("."),
) -> None:
    """Delete artifacts off the Pareto front and old cache entries (dry run by default)."""
    from rich.console import Console

    from hamnet.core.config import RetentionSection, load_config
    from hamnet.core.errors import HamnetError

    console = Console()
    try:
        retention = RetentionSection()
        folder = workdir
        if config is not None:
            cfg = load_config(config)
            retention = cfg.retention
            folder = folder or Path(cfg.workdir)
        folder = folder or Path(".hamnet")
        folder = folder if folder.is_absolute() else base_dir / folder
        report = collect(
            folder,
            keep_runs=retention.keep_runs if keep_runs is None else keep_runs,
            max_age_days=retention.max_age_days if max_age_days is None else max_age_days,
            apply=yes,
        )
    except HamnetError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    _print_report(console, report)


def _print_report(console: Console, report: GcReport) -> None:
    """The items as a table (when there are any), then the summary line."""
    from rich.table import Table

    table = Table(title=f"hamnet gc {report.workdir}")
    for column in ("kind", "path", "MB", "why"):
        table.add_column(column)
    for item in report.items:
        path = item.path
        if path.is_relative_to(report.workdir):
            path = path.relative_to(report.workdir)
        table.add_row(item.kind, str(path), f"{item.size_bytes / 1e6:.2f}", item.reason)
    if report.items:
        console.print(table)
    console.print(report.summary() + ("" if report.applied else " (dry run; --yes deletes)"))
