"""``regtask``: submit, watch, cancel and inspect tasks and company quotas from a terminal.

Tasks go through the RPC shim exactly as the web app sends them (``TASK.*`` methods with the
service token); ``watch`` follows the user's real-time events on Redis; ``quota`` reads the
CompanyQuota and the queue from the Kubernetes API.

Long (about 450 lines) for a reason: one function per command, with its options, which typer
reads from here; what the commands print and call lives in render.py, client.py and kube.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import secrets
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
import typer
from redis.exceptions import RedisError

from regtask import headroom, shards
from regtask import queueplan as quota
from regtask.registry import Registry
from regtask_cli import kube, render
from regtask_cli.client import DEFAULT_SHIM_URL, ShimClient, TaskStarted
from regtask_cli.errors import CliError, ExitCode
from regtask_cli.watching import DEFAULT_REDIS_URL, EventFeed, follow, redact_url

DEFAULT_NAMESPACE = "regtask-system"
# The operator's REGTASK_DEFAULT_MAX_TASKS_PER_USER when a company has no CompanyQuota.
DEFAULT_MAX_TASKS_PER_USER = 10

HELP = f"""
Submit, watch, cancel and inspect regtask tasks.

Tasks go through the RPC shim like the web app (TASK.* methods, service token); watch follows
the user's real-time events on Redis (events:user:UID); quota reads the Kubernetes API.

\b
Exit codes:
  {ExitCode.OK}  ok (watch: the task completed)
  {ExitCode.TASK_FAILED}  the watched task failed or was cancelled
  {ExitCode.USAGE}  bad flags or arguments
  {ExitCode.UNREACHABLE}  shim, Redis or Kubernetes API unreachable (or shim 503)
  {ExitCode.DENIED}  credentials refused or not authorized (401/403)
  {ExitCode.NOT_FOUND}  unknown task (404)
  {ExitCode.REFUSED}  other refusal (400, 409, 429, server error)
  {ExitCode.TIMEOUT}  watch --timeout elapsed
"""

QUOTA_HELP = """
A company's quota, its waiting queue with ETAs, and its running tasks (Kubernetes API).

Reads the CompanyQuota whose spec.companyId is COMPANY (limits and status) and the
RegistryTasks of the control namespace. Without a CompanyQuota the operator's default limits
apply (--default-max-tasks-per-user, --default-max-tasks-per-company).

Order of the waiting tasks (pos): the operator's fair share, recomputed from the listed tasks:
the next free slot goes to the waiting user with the fewest running tasks, then priority, then
age. Headroom: the slots the company may still fill before its maxTasksPerCompany.

ETA of a waiting task. median(type) = median of completionTime - admittedAt (startTime when
admittedAt is missing) over the last --history Succeeded tasks of that type in the namespace.
The limit L = maxTasksPerUser is per user; without maxTasksPerCompany only the task's own user
counts: each of the user's running tasks frees its slot after max(median(type) - elapsed, 0);
the user's waiting tasks ahead of it (queue order) each take the earliest free slot for one
median(type). The task starts ("starts in") when one of the L slots is free after them, never
before its retryAfter (LLM request quota), and is done one median(type) later ("done in"). With
equal medians this is the queue's work divided across the L slots: start = median x (running +
ahead) / L, roughly. With maxTasksPerCompany C the whole company is simulated: each slot that
frees goes by fair share, and no more than C run at once. Unknown (-) without Succeeded history
of a needed type; never while L or C is 0.

Headroom (from Redis, --redis-url): what the company may still spend now of the limits the
gateway enforces: LLM requests and tokens in the rolling last hour, tokens in the rolling last
24 hours, storage, and the busiest user's free task slots. Redis unreachable: said, the rest
still shown.
"""

app = typer.Typer(
    name="regtask",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
submit_app = typer.Typer(
    help="Start a task through the shim (as the web app does); prints its id.",
    no_args_is_help=True,
)
app.add_typer(submit_app, name="submit")


@dataclass(frozen=True)
class Settings:
    shim_url: str
    token: str | None
    redis_url: str
    kubeconfig: str | None
    namespace: str
    request_timeout_s: float
    shards: int = 1

    def company_namespace(self, company_id: str) -> str:
        """The control namespace of the company's operator shard (regtask.shards)."""
        return shards.company_namespace(self.namespace, company_id, self.shards)

    def shim(self) -> ShimClient:
        return ShimClient(self.shim_url, self.token, timeout_s=self.request_timeout_s)


@app.callback()
def configure(
    ctx: typer.Context,
    shim_url: Annotated[
        str, typer.Option(envvar="REGTASK_SHIM_URL", help="Base URL of the RPC shim.")
    ] = DEFAULT_SHIM_URL,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="REGTASK_SHIM_TOKEN",
            help="The shim's service token (SHIM_SERVICE_TOKEN).",
            show_default=False,
        ),
    ] = None,
    redis_url: Annotated[
        str, typer.Option(envvar="REDIS_URL", help="Redis carrying the events (watch).")
    ] = DEFAULT_REDIS_URL,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG", help="Kubeconfig for quota (default: in-cluster, ~/.kube/config)."
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option(envvar="REGTASK_NAMESPACE", help="The control namespace (quota).")
    ] = DEFAULT_NAMESPACE,
    request_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for each shim answer.")
    ] = 15.0,
    shard_count: Annotated[
        int,
        typer.Option(
            "--shards",
            min=1,
            max=shards.MAX_SHARDS,
            envvar="REGTASK_SHARDS",
            help="Operator shards (the chart's operator.shards): where a company's objects live.",
        ),
    ] = 1,
) -> None:
    ctx.obj = Settings(
        shim_url, token or None, redis_url, kubeconfig, namespace, request_timeout, shard_count
    )


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


@contextmanager
def reporting() -> Iterator[None]:
    """Turn a CliError into ``error: ...`` on stderr and its exit code."""
    try:
        yield
    except CliError as exc:
        render.print_error(exc.message)
        raise typer.Exit(int(exc.code)) from None
    except KeyboardInterrupt:
        render.print_error("interrupted")
        raise typer.Exit(130) from None


# ---------------------------------------------------------------------- shared options

TaskIdArg = Annotated[str, typer.Argument(metavar="TASK_ID", help="The task id.")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="The user id the task runs for.")]
CompanyOpt = Annotated[str, typer.Option("--company", "-c", help="The company id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Follow the task until it ends.")]
PollOpt = Annotated[
    float,
    typer.Option(min=0.2, help="Read the status after this many seconds without an event."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(min=0.1, help="Give up watching after this many seconds (exit 7)."),
]
ExistingFile = Annotated[
    Path, typer.Option("--file", "-f", exists=True, dir_okay=False, readable=True)
]


def _watch(
    settings: Settings,
    task_id: str,
    user: str,
    as_json: bool,
    poll_interval: float,
    timeout: float | None,
) -> int:
    """Subscribe first, then follow; the exit code says how the task ended."""
    out = render.make_console()
    feed: EventFeed | None = None
    try:
        feed = EventFeed.open(settings.redis_url, user)
    except CliError as exc:
        if exc.code is ExitCode.USAGE:
            raise
        render.print_warning(f"no live events ({exc.message}); polling every {poll_interval:g}s")
    try:
        with settings.shim() as shim:
            if as_json:
                final = follow(
                    shim,
                    feed,
                    task_id,
                    render.JsonLinesView(out),
                    poll_interval_s=poll_interval,
                    timeout_s=timeout,
                )
                render.print_json_line(
                    out, {"source": "final", **final.model_dump(exclude_none=True)}
                )
            else:
                with render.ProgressView(out, task_id) as view:
                    final = follow(
                        shim,
                        feed,
                        task_id,
                        view,
                        poll_interval_s=poll_interval,
                        timeout_s=timeout,
                    )
                render.print_final(out, final)
    finally:
        if feed is not None:
            feed.close()
    return ExitCode.OK if final.status == "completed" else ExitCode.TASK_FAILED


def _started(
    ctx: typer.Context,
    started: TaskStarted,
    user: str,
    as_json: bool,
    watch: bool,
    poll_interval: float,
    timeout: float | None,
) -> None:
    out = render.make_console()
    if as_json:  # one line: with --watch, the first of a JSON-lines stream
        render.print_json_line(out, started.model_dump(exclude_none=True))
    else:
        render.print_started(out, started)
    if watch:
        code = _watch(_settings(ctx), started.task_id, user, as_json, poll_interval, timeout)
        raise typer.Exit(code)


def _file_document(path: Path) -> dict[str, Any]:
    """A file as JSON: UTF-8 text as ``text``, anything else as ``content_base64``."""
    raw = path.read_bytes()
    document: dict[str, Any] = {
        "filename": path.name,
        "content_type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
    }
    try:
        document["text"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        document["content_base64"] = base64.b64encode(raw).decode("ascii")
    return document


# ---------------------------------------------------------------------- submit


@submit_app.command("document-analysis")
def submit_document_analysis(
    ctx: typer.Context,
    user: UserOpt,
    company: CompanyOpt,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", exists=True, dir_okay=False, readable=True, help="Document to analyse."
        ),
    ] = None,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text to analyse.")] = None,
    job_id: Annotated[
        str | None,
        typer.Option(help="Client job id (task doc_analysis_JOB); a fresh one when unset."),
    ] = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    poll_interval: PollOpt = 3.0,
    timeout: TimeoutOpt = None,
) -> None:
    """TASK.start_document_analysis with document_data = {company_id, text} for --text, or
    {company_id, filename, content_type, text | content_base64} for --file."""
    if file is not None and text is None:
        document = {"company_id": company, **_file_document(file)}
    elif text is not None and file is None:
        document = {"company_id": company, "text": text}
    else:
        raise typer.BadParameter("give exactly one of --file or --text")
    with reporting():
        with _settings(ctx).shim() as shim:
            started = shim.start_document_analysis(
                user, document, job_id or f"cli-{secrets.token_hex(6)}"
            )
        _started(ctx, started, user, as_json, watch, poll_interval, timeout)


@submit_app.command("llm")
def submit_llm(
    ctx: typer.Context,
    user: UserOpt,
    company: CompanyOpt,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt.")],
    model: Annotated[str | None, typer.Option(help="Model (LLM.start_conversation).")] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Sampling temperature.")
    ] = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    poll_interval: PollOpt = 3.0,
    timeout: TimeoutOpt = None,
) -> None:
    """TASK.start_llm_conversation (LLM.start_conversation when --model or --temperature is
    given); prints the task id and the conversation id."""
    with reporting():
        with _settings(ctx).shim() as shim:
            started = shim.start_llm_conversation(user, company, prompt, model, temperature)
        _started(ctx, started, user, as_json, watch, poll_interval, timeout)


@submit_app.command("vectors")
def submit_vectors(
    ctx: typer.Context,
    user: UserOpt,
    company: CompanyOpt,
    files: Annotated[
        list[Path],
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Document to embed (repeat for several).",
        ),
    ],
    collection: Annotated[str, typer.Option(help="Target Chroma collection.")],
    job_id: Annotated[
        str | None, typer.Option(help="Client job id (task vector_JOB, idempotent).")
    ] = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    poll_interval: PollOpt = 3.0,
    timeout: TimeoutOpt = None,
) -> None:
    """TASK.start_vector_computation with one {filename, content_type, text | content_base64}
    per --file."""
    documents = [_file_document(path) for path in files]
    with reporting():
        with _settings(ctx).shim() as shim:
            started = shim.start_vector_computation(user, company, documents, collection, job_id)
        _started(ctx, started, user, as_json, watch, poll_interval, timeout)


# ---------------------------------------------------------------------- read and cancel


@app.command()
def status(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """A task's status, progress, step, and its result or error (TASK.get_task_status)."""
    with reporting(), _settings(ctx).shim() as shim:
        answer = shim.task_status(task_id)
    out = render.make_console()
    if as_json:
        render.print_json(out, answer.model_dump(exclude_none=True))
    else:
        render.print_status(out, answer)


@app.command()
def watch(
    ctx: typer.Context,
    task_id: TaskIdArg,
    user: UserOpt,
    as_json: JsonOpt = False,
    poll_interval: PollOpt = 3.0,
    timeout: TimeoutOpt = None,
) -> None:
    """Follow a task live until it ends: a progress bar fed by the user's real-time events
    (subscribed before the first status read), with a status read after --poll-interval
    seconds without an event. Exit 0 when completed, 1 when failed or cancelled."""
    with reporting():
        code = _watch(_settings(ctx), task_id, user, as_json, poll_interval, timeout)
    raise typer.Exit(code)


@app.command()
def cancel(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """Ask the operator to stop a task (TASK.cancel_task); a finished task is refused (6)."""
    with reporting(), _settings(ctx).shim() as shim:
        answer = shim.cancel_task(task_id)
    out = render.make_console()
    if as_json:
        render.print_json(out, answer.model_dump())
    else:
        out.print(f"cancel requested for {answer.task_id} (status was {answer.status})")


@app.command("list")
def list_tasks(ctx: typer.Context, user: UserOpt, as_json: JsonOpt = False) -> None:
    """The user's tasks, newest first (TASK.list_user_tasks)."""
    with reporting(), _settings(ctx).shim() as shim:
        answer = shim.list_user_tasks(user)
    out = render.make_console()
    if as_json:
        render.print_json(out, answer.model_dump(exclude_none=True))
    else:
        out.print(render.task_table(answer.tasks))


@app.command("shard")
def shard_view(
    ctx: typer.Context,
    companies: Annotated[list[str], typer.Argument(help="Company ids.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Which operator shard each company lives in, and the namespace of its RegistryTasks and
    CompanyQuota (SHA-256 of the company id modulo --shards; see README, Shards)."""
    settings = _settings(ctx)
    rows = [
        {
            "company_id": company,
            "shard": shards.shard_of(company, settings.shards),
            "namespace": settings.company_namespace(company),
        }
        for company in companies
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        typer.echo(f"{row['company_id']}\tshard {row['shard']}\t{row['namespace']}")


@app.command("quota", help=QUOTA_HELP)
def quota_view(
    ctx: typer.Context,
    company: Annotated[str, typer.Argument(metavar="COMPANY", help="The company id.")],
    as_json: JsonOpt = False,
    history: Annotated[
        int, typer.Option(min=1, help="Succeeded tasks per type behind the median.")
    ] = quota.DEFAULT_HISTORY,
    default_max_tasks_per_user: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="REGTASK_DEFAULT_MAX_TASKS_PER_USER",
            help="The operator's limit for a company without CompanyQuota.",
        ),
    ] = DEFAULT_MAX_TASKS_PER_USER,
    default_max_tasks_per_company: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="REGTASK_DEFAULT_MAX_TASKS_PER_COMPANY",
            help="The operator's company cap for a company without CompanyQuota (none if unset).",
        ),
    ] = None,
) -> None:
    settings = _settings(ctx)
    with reporting():
        api = kube.api_client(settings.kubeconfig)
        try:
            found = kube.read_company(api, settings.company_namespace(company), company)
        finally:
            kube.close_client(api)
    records = [quota.record_from_resource(obj) for obj in found.tasks]
    readable = [r for r in records if r is not None]
    if found.quota is not None:
        spec = found.quota.get("spec") or {}
        limit = int(spec.get("maxTasksPerUser", 10))
        cap_raw = spec.get("maxTasksPerCompany")
        company_cap = int(cap_raw) if cap_raw is not None else None
        source = "CompanyQuota"
    else:
        limit = default_max_tasks_per_user
        company_cap = default_max_tasks_per_company
        source = "operator default applies"
    now = datetime.now(UTC)
    plan = quota.plan_company(readable, company, limit, history, now=now, company_cap=company_cap)
    busiest = max(Counter(row.record.user_id for row in plan.running).values(), default=0)
    room = _headroom(settings.redis_url, company, busiest)
    out = render.make_console()
    if as_json:
        document = render.quota_document(
            company, found.quota, plan, source, history, len(records) - len(readable), now
        )
        document["headroom"] = room if isinstance(room, str) else asdict(room)
        render.print_json(out, document)
    else:
        render.print_quota(out, company, found.quota, plan, source, history, now)
        render.print_headroom(out, room)


def _headroom(redis_url: str, company: str, busiest_user_running: int) -> headroom.Headroom | str:
    """The company's headroom from Redis (the limits the gateway enforces, its LLM log and
    storage counter); a sentence instead when Redis does not answer (the rest still shows)."""

    async def read() -> headroom.Headroom:
        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            quotas = await Registry(client).effective_quotas(company)
            return await headroom.read(client, company, quotas, busiest_user_running)
        finally:
            await client.aclose()

    try:
        return asyncio.run(read())
    except (RedisError, OSError) as exc:
        return f"unknown: Redis at {redact_url(redis_url)} did not answer ({exc})"


if __name__ == "__main__":
    app()
