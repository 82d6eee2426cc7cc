"""Everything the CLI prints: rich tables and bars for people, JSON for scripts.

User-supplied text (steps, event data, errors) is printed as plain text, never as rich markup,
so a document containing ``[bold]`` cannot restyle the terminal.

Long (about 400 lines) for a reason: one function per view (task, list, progress, quota, queue,
errors), in its two forms, so that what a person and a script see stays side by side.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from rich.console import Console, JustifyMethod
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from regtask.headroom import Headroom
from regtask.queueplan import QuotaPlan
from regtask.storage import MB
from regtask.timeutil import parse_iso
from regtask_cli.client import TaskStarted, TaskStatus
from regtask_cli.watching import Change, WatchState

STATUS_STYLES = {
    "queued": "cyan",
    "waiting_quota": "yellow",
    "processing": "blue",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
DATA_PREVIEW_CHARS = 160
DASH = "-"


def make_console(*, stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_error(message: str) -> None:
    """``error: ...`` on stderr, on one line whatever the terminal's width (scripts grep it)."""
    make_console(stderr=True).print(f"error: {message}", markup=False, soft_wrap=True)


def print_warning(message: str) -> None:
    make_console(stderr=True).print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


def print_json(console: Console, value: Any) -> None:
    """One JSON document on stdout, unstyled, so ``| jq`` works."""
    console.print_json(json.dumps(value, ensure_ascii=False, default=str), highlight=False)


def print_json_line(console: Console, value: Any) -> None:
    """One compact JSON object per line (``watch --json`` is a stream)."""
    console.print(
        json.dumps(value, ensure_ascii=False, default=str),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``1h02m``; a dash when unknown."""
    if seconds is None:
        return DASH
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def age(created: str | datetime | None, now: datetime | None = None) -> str:
    if created is None:
        return DASH
    try:
        moment = parse_iso(created) if isinstance(created, str) else created
    except ValueError:
        return str(created)
    return duration(((now or datetime.now(UTC)) - moment).total_seconds())


def compact(value: Any, limit: int = DATA_PREVIEW_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize_result(result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """One line per top-level field: scalars as they are, collections by size."""
    if not result:
        return []
    lines: list[tuple[str, str]] = []
    for key, value in result.items():
        if isinstance(value, list):
            shown = f"{len(value)} item(s)"
            if value and all(isinstance(v, str | int | float) for v in value):
                shown += f": {compact(value, 80)}"
        elif isinstance(value, dict):
            shown = f"{{{', '.join(list(value)[:6])}{', ...' if len(value) > 6 else ''}}}"
        else:
            shown = compact(value, 120) if not isinstance(value, str) else value[:120]
        lines.append((str(key), shown))
    return lines


# ---------------------------------------------------------------------- tasks


def print_started(console: Console, started: TaskStarted) -> None:
    line = Text.assemble("task ", (started.task_id, "bold"), " ", status_text(started.status))
    console.print(line)
    if started.conversation_id:
        console.print(Text.assemble("conversation ", (started.conversation_id, "bold")))
    if started.collection_name:
        console.print(Text.assemble("collection ", started.collection_name))


def _fields(answer: TaskStatus) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column(overflow="fold")
    grid.add_row("task", Text(answer.task_id, style="bold"))
    grid.add_row("type", answer.task_type)
    grid.add_row("status", status_text(answer.status))
    grid.add_row("progress", f"{answer.progress}%")
    grid.add_row("step", Text(answer.current_step))
    grid.add_row("created", answer.created_at or DASH)
    if answer.conversation_id:
        grid.add_row("conversation", answer.conversation_id)
    if answer.error:
        grid.add_row("error", Text(answer.error, style="red"))
    for key, value in summarize_result(answer.result):
        grid.add_row(f"result.{key}", Text(value))
    return grid


def print_status(console: Console, answer: TaskStatus) -> None:
    console.print(_fields(answer))


def task_table(tasks: list[TaskStatus], now: datetime | None = None) -> Table:
    table = Table(title=None, show_lines=False)
    table.add_column("id", overflow="fold", style="bold")
    table.add_column("type")
    table.add_column("status")
    table.add_column("progress", justify="right")
    table.add_column("step", overflow="fold")
    table.add_column("created")
    table.add_column("age", justify="right")
    for task in tasks:
        table.add_row(
            task.task_id,
            task.task_type,
            status_text(task.status),
            f"{task.progress}%",
            Text(task.current_step),
            task.created_at or DASH,
            age(task.created_at, now),
        )
    return table


def print_final(console: Console, final: TaskStatus) -> None:
    """The end of a watch: outcome, then the result's summary or the error."""
    mark = {"completed": "done", "failed": "FAILED", "cancelled": "CANCELLED"}.get(
        final.status, final.status
    )
    console.print(
        Text.assemble(
            (f"{mark}: ", STATUS_STYLES.get(final.status, "")),
            (final.task_id, "bold"),
            f" {final.status} {final.progress}% ({final.current_step})",
        )
    )
    if final.error:
        console.print(Text(f"  error: {final.error}", style="red"))
    for key, value in summarize_result(final.result):
        console.print(Text(f"  {key}: {value}"))


# ---------------------------------------------------------------------- watch views


class ProgressView:
    """A live bar (percent, status, step, elapsed) with one log line per event above it."""

    def __init__(self, console: Console, task_id: str) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.fields[step]}", markup=False),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar = self.progress.add_task(
            task_id.replace("[", r"\["), total=100, status="", step=""
        )

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def show(self, state: WatchState, change: Change) -> None:
        self.progress.update(
            self.bar, completed=state.progress, status=state.status, step=state.current_step
        )
        line = Text.assemble(
            (datetime.now(UTC).strftime("%H:%M:%S "), "dim"),
            (f"{change.source:<5} ", "dim"),
            status_text(state.status),
            f" {state.progress:>3}% {change.note or state.current_step}",
        )
        if change.data:
            line.append(f"  {compact(change.data)}", style="dim")
        self.progress.console.print(line)

    def warn(self, message: str) -> None:
        print_warning(message)


class JsonLinesView:
    """``watch --json``: one JSON object per change, then the final status (``"source":
    "final"``), one per line, for scripts and logs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def show(self, state: WatchState, change: Change) -> None:
        print_json_line(
            self.console,
            {
                "task_id": state.task_id,
                "source": change.source,
                "status": state.status,
                "progress": state.progress,
                "current_step": state.current_step,
                "note": change.note,
                "data": change.data,
            },
        )

    def warn(self, message: str) -> None:
        print_warning(message)


# ---------------------------------------------------------------------- quota


def quota_document(
    company_id: str,
    quota: dict[str, Any] | None,
    plan: QuotaPlan,
    limit_source: str,
    history: int,
    skipped: int,
    now: datetime,
) -> dict[str, Any]:
    """``quota --json``: the same facts as the tables, with seconds as numbers."""
    return {
        "company_id": company_id,
        "quota": None
        if quota is None
        else {
            "name": (quota.get("metadata") or {}).get("name"),
            "spec": quota.get("spec") or {},
            "status": {
                k: v for k, v in (quota.get("status") or {}).items() if k != "operatorState"
            },
        },
        "max_tasks_per_user": plan.limit,
        "max_tasks_per_company": plan.company_cap,
        "slot_headroom": plan.headroom,
        "limit_source": limit_source,
        "history": history,
        "run_times": {
            t: {"median_s": r.median_s, "samples": r.samples} for t, r in plan.run_times.items()
        },
        "waiting": [
            {
                "task_id": row.record.task_id,
                "position": row.position,
                "queue_position": row.record.queue_position,
                "user_id": row.record.user_id,
                "task_type": row.record.task_type,
                "reason": row.record.reason,
                "age_s": (now - row.record.created).total_seconds() if row.record.created else None,
                "eta_start_s": row.eta.start_in_s,
                "eta_done_s": row.eta.done_in_s,
                "eta_note": row.eta.note,
            }
            for row in plan.waiting
        ],
        "running": [
            {
                "task_id": row.record.task_id,
                "user_id": row.record.user_id,
                "task_type": row.record.task_type,
                "progress": row.record.progress,
                "current_step": row.record.current_step,
                "elapsed_s": row.elapsed_s,
                "remaining_s": row.remaining_s,
            }
            for row in plan.running
        ],
        "unreadable_tasks": skipped,
    }


def _limits(company_id: str, quota: dict[str, Any] | None, plan: QuotaPlan, source: str) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("company", Text(company_id, style="bold"))
    if quota is None:
        grid.add_row("CompanyQuota", Text(f"none: {source}", style="yellow"))
        grid.add_row("maxTasksPerUser", str(plan.limit))
        _company_cap(grid, plan)
        return grid
    spec = quota.get("spec") or {}
    status = quota.get("status") or {}
    grid.add_row("CompanyQuota", str((quota.get("metadata") or {}).get("name", DASH)))
    for key in (
        "maxTasksPerUser",
        "maxLlmRequestsPerHour",
        "maxLlmTokensPerHour",
        "maxLlmTokensPerDay",
        "storageLimitMb",
        "rateLimitPolicy",
    ):
        grid.add_row(key, str(spec.get(key, DASH)))
    _company_cap(grid, plan)
    for key in ("activeTasks", "waitingTasks", "llmRequestsThisHour", "storageUsedMb"):
        grid.add_row(f"status.{key}", str(status.get(key, DASH)))
    return grid


def _company_cap(grid: Table, plan: QuotaPlan) -> None:
    """maxTasksPerCompany and the slots left under it (listed running tasks)."""
    if plan.company_cap is None:
        grid.add_row("maxTasksPerCompany", Text("none", style="dim"))
        return
    grid.add_row("maxTasksPerCompany", str(plan.company_cap))
    grid.add_row("slot headroom", str(plan.headroom))


def print_headroom(console: Console, room: Headroom | str) -> None:
    """What the company may still spend now, per limit (rolling windows for the LLM)."""
    if isinstance(room, str):
        console.print(Text(f"headroom: {room}", style="yellow"))
        return
    grid = Table(title="Headroom (left now)", title_justify="left", show_header=False)
    grid.add_column(style="dim")
    grid.add_column(justify="right")
    grid.add_row("LLM requests, last 60 min", str(room.requests_per_hour))
    for name, value in (
        ("LLM tokens, last 60 min", room.tokens_per_hour),
        ("LLM tokens, last 24 h", room.tokens_per_day),
    ):
        grid.add_row(name, "no limit" if value is None else str(value))
    grid.add_row("storage", f"{room.storage_bytes / MB:.1f} MB")
    if room.slots_busiest_user is not None:
        grid.add_row("task slots, busiest user", str(room.slots_busiest_user))
    console.print(grid)


def print_quota(
    console: Console,
    company_id: str,
    quota: dict[str, Any] | None,
    plan: QuotaPlan,
    limit_source: str,
    history: int,
    now: datetime,
) -> None:
    console.print(_limits(company_id, quota, plan, limit_source))
    times = ", ".join(
        f"{t} {duration(r.median_s)} ({r.samples} run{'s' if r.samples != 1 else ''})"
        for t, r in sorted(plan.run_times.items())
    )
    console.print(
        Text(f"median run time, last {history} Succeeded per type: {times or 'no history yet'}")
    )

    waiting = Table(title=f"Waiting ({len(plan.waiting)})", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("pos", "right"),
        ("task", "left"),
        ("user", "left"),
        ("type", "left"),
        ("reason", "left"),
        ("age", "right"),
        ("starts in", "right"),
        ("done in", "right"),
        ("note", "left"),
    ]
    for name, justify in columns:
        waiting.add_column(name, justify=justify, overflow="fold")
    for row in plan.waiting:
        record = row.record
        waiting.add_row(
            str(row.position),
            record.task_id,
            record.user_id,
            record.task_type,
            record.reason or DASH,
            age(record.created, now),
            duration(row.eta.start_in_s),
            duration(row.eta.done_in_s),
            row.eta.note,
        )
    console.print(waiting)

    running = Table(title=f"Running ({len(plan.running)})", title_justify="left")
    for name in ("task", "user", "type", "progress", "step", "running for", "remaining"):
        running.add_column(name, overflow="fold")
    for item in plan.running:
        record = item.record
        running.add_row(
            record.task_id,
            record.user_id,
            record.task_type,
            f"{record.progress or 0}%",
            Text(record.current_step or DASH),
            duration(item.elapsed_s),
            duration(item.remaining_s),
        )
    console.print(running)
