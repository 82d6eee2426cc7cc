"""Node stand-in (TEST/DEV TOOL ONLY): plays kubelet + Job controller for the operator's Jobs.

The test control plane (``regtask_dev.controlplane``) has no kubelet and no controller-manager,
so nothing would ever run a Job. ``NodeSimulator`` watches ``batch/v1`` Jobs matching a label
selector (default: the operator's ``app.kubernetes.io/managed-by=regtask-operator``) in all
namespaces and, for each Job, runs the first container's ``command + args`` as a local
process, then writes the Job status through the ``status`` subresource the way the Job
controller of Kubernetes 1.37 does (``startTime``, ``active``, ``ready``, ``terminating``,
``succeeded``, ``failed``, ``SuccessCriteriaMet``/``Complete``, ``FailureTarget``/``Failed``,
``Suspended``, ``completionTime``).

What it honours: ``completions`` (run one after the other), ``backoffLimit``,
``activeDeadlineSeconds``, ``podFailurePolicy`` rules with ``onExitCodes`` (``FailJob``,
``Ignore``, ``Count``), ``suspend``, Job deletion, ``terminationGracePeriodSeconds``, ``env``
(``value``, ``$(VAR)`` references, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``),
``envFrom``, ``workingDir``, and projected ServiceAccount tokens (for those pods it creates Pod
objects, keeps ResourceQuota status and writes the tokens where the env points: see
:mod:`regtask_dev.nodepods`). What it does not: images, other volumes, Pod objects for pods
without such a token, Pod status, parallelism (attempts run one at a time), the Job
controller's exponential back-off (``retry_delay`` instead), indexed Jobs and
``onPodConditions`` rules (no Pod conditions exist here).

``stop()`` is a node loss: every running process gets SIGKILL and no status is written, so
the Jobs stay ``active`` without progress, as they would until a real controller noticed. A
SIGKILLed ``python -m regtask_dev.nodesim`` takes its direct children along (parent-death
signal). A stand-in started later picks such Jobs up and starts a new attempt at once (the
real controller would first count the lost pod as failed, minutes later).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import datetime
import json
import logging
import os
import re
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3 import BaseHTTPResponse

from regtask_dev.lifeline import die_with_parent
from regtask_dev.nodepods import NODE_NAME, PodObjects, PodRefused, map_path, token_sources

log = logging.getLogger(__name__)

DEFAULT_LABEL_SELECTOR = "app.kubernetes.io/managed-by=regtask-operator"
_DEFAULT_BACKOFF_LIMIT = 6
_DEFAULT_GRACE_SECONDS = 30
_POLL_SECONDS = 0.1
_WATCH_SECONDS = 60
_STATUS_RETRIES = 10

Job = dict[str, Any]
_T = TypeVar("_T")


class NodeSimError(RuntimeError):
    """The stand-in could not do what a node would."""


class _Stopped(Exception):
    """The node went away (``stop()``): stop at once and write nothing."""


class _Gone(Exception):
    """The Job was deleted (or is being deleted): its pods would be terminated."""


class _SuspendRequested(Exception):
    """``spec.suspend`` became true: the controller would delete the running pod."""


class _DeadlineExceeded(Exception):
    """``activeDeadlineSeconds`` passed since ``status.startTime``."""

    def __init__(self, killed: bool = False) -> None:
        super().__init__()
        self.killed = killed


class _PodConfigError(Exception):
    """What a kubelet reports as CreateContainerConfigError: the pod stays pending."""


@dataclass(frozen=True)
class Attempt:
    """One run of a Job's container: what a Pod would be. ``exit_code`` is None while running."""

    namespace: str
    job: str
    number: int
    pod_name: str
    log_path: Path
    pid: int
    exit_code: int | None = None

    def output(self) -> str:
        """Combined stdout + stderr of the process so far."""
        return self.log_path.read_text(errors="replace")


def _raw(response: object) -> BaseHTTPResponse:
    """What ``_preload_content=False`` returns (the client's hints name the model instead)."""
    return cast(BaseHTTPResponse, response)


def _json(response: object) -> Job:
    decoded: Job = json.loads(_raw(response).data)
    return decoded


def _lines(response: BaseHTTPResponse) -> Iterator[bytes]:
    """Split a watch stream into its newline-delimited JSON events as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _condition(status: Job, type_: str) -> Job | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _condition_true(status: Job, type_: str) -> bool:
    cond = _condition(status, type_)
    return cond is not None and cond.get("status") == "True"


def _set_condition(status: Job, type_: str, value: str, reason: str, message: str) -> None:
    """Mirror of the controller's ensureJobConditionStatus: a False condition is never added."""
    now = _now()
    fresh = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }
    cond = _condition(status, type_)
    if cond is not None:
        if (cond.get("status"), cond.get("reason"), cond.get("message")) != (
            value,
            reason,
            message,
        ):
            cond.clear()
            cond.update(fresh)
    elif value != "False":
        status.setdefault("conditions", []).append(fresh)


def _is_finished(job: Job) -> bool:
    status = job.get("status") or {}
    return _condition_true(status, "Complete") or _condition_true(status, "Failed")


def _is_deleting(job: Job) -> bool:
    return bool(job["metadata"].get("deletionTimestamp"))


def _is_suspended(job: Job) -> bool:
    return bool(job["spec"].get("suspend"))


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, defined: Mapping[str, str]) -> str:
    """Kubelet's ``$(VAR)`` expansion: unknown references stay as written, ``$$`` is ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _VAR_REF.sub(substitute, text)


def _exit_code(returncode: int) -> int:
    """Container runtimes report death by signal N as 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def _match_pod_failure_policy(
    policy: Job | None, container: str, exit_code: int, namespace: str, pod: str
) -> tuple[str, str | None]:
    """Return (action, FailJob message) like the controller's matchPodFailurePolicy."""
    for index, rule in enumerate((policy or {}).get("rules") or []):
        on_exit = rule.get("onExitCodes")
        if not on_exit or exit_code == 0:
            continue
        if on_exit.get("containerName") not in (None, container):
            continue
        listed = exit_code in on_exit.get("values", [])
        if listed != (on_exit.get("operator") == "In"):
            continue
        action = str(rule["action"])
        message = None
        if action == "FailJob":
            message = (
                f"Container {container} for pod {namespace}/{pod} failed with exit code "
                f"{exit_code} matching FailJob rule at index {index}"
            )
        return action, message
    return "Count", None


class NodeSimulator:
    """Runs labelled Jobs as local processes and reports their status like the Job controller.

    ``base_env`` is the environment every process starts from (default: this process's);
    the container's ``env``/``envFrom`` are merged over it. ``retry_delay`` replaces the
    controller's 10 s exponential back-off between failed attempts so tests stay fast.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        log_dir: Path,
        *,
        label_selector: str = DEFAULT_LABEL_SELECTOR,
        base_env: Mapping[str, str] | None = None,
        retry_delay: float = 0.2,
    ) -> None:
        self.log_dir = log_dir
        self.label_selector = label_selector
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.retry_delay = retry_delay
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._pods = PodObjects(self._core, log_dir / "volumes")
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._runners: dict[str, _JobRunner] = {}
        self._done: set[str] = set()  # UIDs finished or deleted: stale events must not rerun them
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._attempts: dict[tuple[str, str], list[Attempt]] = {}
        self._watcher: threading.Thread | None = None
        self._watch_response: BaseHTTPResponse | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> NodeSimulator:
        """List the Jobs once (so errors surface here), then keep watching in a thread."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        resource_version = self._relist()
        self._watcher = threading.Thread(
            target=self._watch_loop, args=(resource_version,), name="nodesim-watch", daemon=True
        )
        self._watcher.start()
        log.info("node stand-in watching Jobs with %s", self.label_selector)
        return self

    def stop(self) -> None:
        """Node loss: SIGKILL every running process, write no status, stop watching."""
        self._stopping.set()
        with self._lock:
            procs = list(self._procs.values())
            runners = list(self._runners.values())
            response = self._watch_response
        for proc in procs:
            _kill_group(proc, signal.SIGKILL)
        if response is not None:
            with contextlib.suppress(OSError):
                response.shutdown()  # unblocks the watch thread's read
        for runner in runners:
            runner.join(timeout=10)
        if self._watcher is not None:
            self._watcher.join(timeout=10)

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests look at --------------------------------------------------------------------

    def attempts(self, namespace: str, name: str) -> list[Attempt]:
        """Attempts (started processes) of a Job so far, oldest first."""
        with self._lock:
            return list(self._attempts.get((namespace, name), []))

    def wait_for_attempt(
        self, namespace: str, name: str, number: int = 1, *, timeout: float = 30.0
    ) -> Attempt:
        """Block until the Job's ``number``-th attempt has started; return it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._attempts.get((namespace, name), [])) < number:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"attempt {number} of Job {namespace}/{name} not started")
                self._lock.wait(remaining)
            return self._attempts[(namespace, name)][number - 1]

    # -- runner bookkeeping --------------------------------------------------------------------

    def _record_started(self, attempt: Attempt, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs[proc.pid] = proc
            self._attempts.setdefault((attempt.namespace, attempt.job), []).append(attempt)
            self._lock.notify_all()

    def _record_exited(self, attempt: Attempt, exit_code: int) -> None:
        with self._lock:
            self._procs.pop(attempt.pid, None)
            runs = self._attempts[(attempt.namespace, attempt.job)]
            runs[runs.index(attempt)] = replace(attempt, exit_code=exit_code)
            self._lock.notify_all()

    def _runner_done(self, uid: str, *, forget: bool) -> None:
        with self._lock:
            self._runners.pop(uid, None)
            if forget:
                self._done.add(uid)

    # -- watching ------------------------------------------------------------------------------

    def _list_kwargs(self) -> dict[str, Any]:
        return {"label_selector": self.label_selector, "_preload_content": False}

    def _relist(self) -> str:
        response = self._batch.list_job_for_all_namespaces(
            _request_timeout=30, **self._list_kwargs()
        )
        listing = _json(response)
        seen = set()
        for job in listing["items"]:
            seen.add(job["metadata"]["uid"])
            self._dispatch(job)
        with self._lock:
            vanished = [r for uid, r in self._runners.items() if uid not in seen]
        for runner in vanished:
            runner.update(None)
        return str(listing["metadata"]["resourceVersion"])

    def _watch_loop(self, resource_version: str | None) -> None:
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
            except Exception:
                if self._stopping.is_set():
                    return
                log.warning("watching Jobs failed; re-listing in 1 s", exc_info=True)
                resource_version = None
                self._stopping.wait(1.0)

    def _watch(self, resource_version: str) -> str | None:
        """Follow one watch request; return where to resume, or None to re-list (410 Gone)."""
        response = _raw(
            self._batch.list_job_for_all_namespaces(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=_WATCH_SECONDS,
                _request_timeout=(10, _WATCH_SECONDS + 30),
                **self._list_kwargs(),
            )
        )
        with self._lock:
            self._watch_response = response
        try:
            if self._stopping.is_set():  # stop() ran before it could see this response
                return None
            for line in _lines(response):
                if self._stopping.is_set():
                    return None
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    log.info("watch ended with %s; re-listing", obj.get("message"))
                    return None
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    self._dispatch_deleted(obj)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._dispatch(obj)
        finally:
            with self._lock:
                self._watch_response = None
            response.release_conn()
        return resource_version

    def _dispatch(self, job: Job) -> None:
        uid = job["metadata"]["uid"]
        with self._lock:
            if self._stopping.is_set() or uid in self._done:
                return
            runner = self._runners.get(uid)
            if runner is None:
                if _is_finished(job) or _is_deleting(job):
                    return
                runner = self._runners[uid] = _JobRunner(self, job)
                runner.start()
                return
        runner.update(job)

    def _dispatch_deleted(self, job: Job) -> None:
        with self._lock:
            runner = self._runners.get(job["metadata"]["uid"])
        if runner is not None:
            runner.update(None)

    # -- API access for runners ----------------------------------------------------------------

    def _read_job(self, namespace: str, name: str) -> Job:
        return _json(self._batch.read_namespaced_job(name, namespace, _preload_content=False))

    def _replace_job_status(self, job: Job) -> Job:
        meta = job["metadata"]
        # The client sends a plain dict as it is; its hints only name the model.
        body = cast(client.V1Job, job)
        return _json(
            self._batch.replace_namespaced_job_status(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        )

    def _read_data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        """Decoded data of a Secret or ConfigMap; {} if optional and missing."""
        read = (
            self._core.read_namespaced_secret
            if kind == "Secret"
            else (self._core.read_namespaced_config_map)
        )
        try:
            obj = _json(read(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise _PodConfigError(f'{kind.lower()} "{name}" not found') from exc
            raise
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data: dict[str, str] = dict(obj.get("data") or {})
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode()
        return data


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _JobRunner(threading.Thread):
    """Drives one Job from first attempt to a terminal condition (or deletion / node loss)."""

    def __init__(self, sim: NodeSimulator, job: Job) -> None:
        meta = job["metadata"]
        super().__init__(name=f"nodesim-{meta['namespace']}/{meta['name']}", daemon=True)
        self._sim = sim
        self._namespace: str = meta["namespace"]
        self._name: str = meta["name"]
        self._uid: str = meta["uid"]
        self._job = job
        self._gone = False
        self._changed = threading.Condition()
        self._start_time: float | None = None

    def update(self, job: Job | None) -> None:
        """Take the newest Job from the watch; None means it was deleted."""
        with self._changed:
            if job is None:
                self._gone = True
            else:
                self._job = job
            self._changed.notify_all()

    def run(self) -> None:
        # Only a node loss leaves the Job to a later runner; after a bug in here, rerunning
        # the Job's command on the next watch event would hide the bug behind repeated runs.
        forget = True
        try:
            self._run_job()
        except _Gone:
            log.info("Job %s/%s deleted", self._namespace, self._name)
        except _Stopped:
            log.info("Job %s/%s abandoned: node stopped", self._namespace, self._name)
            forget = False
        except Exception:
            log.exception(
                "running Job %s/%s failed; not touching it again", self._namespace, self._name
            )
        finally:
            self._sim._runner_done(self._uid, forget=forget)

    # -- the loop ------------------------------------------------------------------------------

    def _run_job(self) -> None:
        while True:
            try:
                job = self._wait_runnable()
                container, pod_name, exit_code = self._run_attempt(job)
                if self._record_exit(job, container, pod_name, exit_code):
                    return
                self._pause(self._sim.retry_delay)
            except _SuspendRequested:
                continue
            except _DeadlineExceeded as exc:
                self._record_deadline(killed=exc.killed)
                return

    def _latest(self) -> Job:
        with self._changed:
            if self._gone or _is_deleting(self._job):
                raise _Gone
            return self._job

    def _check_interrupts(self) -> None:
        if self._sim._stopping.is_set():
            raise _Stopped
        job = self._latest()
        if _is_suspended(job):
            raise _SuspendRequested
        deadline = job["spec"].get("activeDeadlineSeconds")
        if (
            deadline is not None
            and self._start_time is not None
            and (time.time() >= self._start_time + deadline)
        ):
            raise _DeadlineExceeded

    def _pause(self, seconds: float) -> None:
        """Sleep, waking for Job changes so interrupts are noticed at once."""
        end = time.monotonic() + seconds
        while True:
            self._check_interrupts()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            with self._changed:
                self._changed.wait(min(remaining, _POLL_SECONDS))

    def _wait_runnable(self) -> Job:
        """Wait out suspension (reporting it), then mark the Job started/resumed with a pod."""
        while True:
            if self._sim._stopping.is_set():
                raise _Stopped
            if not _is_suspended(self._latest()):
                break
            self._update_status(_mark_suspended)
            with self._changed:
                self._changed.wait(_POLL_SECONDS * 5)
        job = self._update_status(_mark_pod_pending)
        self._start_time = _parse_time(job["status"]["startTime"])
        return job

    def _run_attempt(self, job: Job) -> tuple[str, str, int]:
        """Run the first container once; return (container name, pod name, exit code).

        Pods that mount a projected ServiceAccount token get a Pod object (the token is bound
        to it), deleted when the process ends; others run without one.
        """
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        # The API server's generateName: the base cut to 58 characters, 5 random ones added.
        pod_name = f"{self._name}-"[:58] + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5)
        )
        if not token_sources(pod_spec):
            return self._run_container(job, container, pod_name, {})
        pod = self._create_pod(job, pod_name)
        try:
            mounts = self._mount_tokens(pod, container)
            return self._run_container(job, container, pod_name, mounts)
        finally:
            self._sim._pods.delete(self._namespace, pod_name)

    def _until_accepted(self, action: Callable[[], _T], refused: type[Exception], what: str) -> _T:
        """Retry ``action`` every second while it raises ``refused``, as a kubelet or the Job
        controller keeps retrying a pod that cannot start yet; each new reason is logged once."""
        reported = None
        while True:
            self._check_interrupts()
            try:
                return action()
            except refused as exc:
                if str(exc) != reported:
                    log.warning("Job %s/%s %s: %s", self._namespace, self._name, what, exc)
                    reported = str(exc)
            self._pause(1.0)

    def _create_pod(self, job: Job, pod_name: str) -> dict[str, Any]:
        """Create the Pod, retrying while the API server refuses it (quota, admission)."""
        return self._until_accepted(
            lambda: self._sim._pods.create(job, pod_name), PodRefused, f"pod {pod_name} not created"
        )

    def _mount_tokens(self, pod: dict[str, Any], container: Job) -> dict[str, Path]:
        return self._until_accepted(
            lambda: self._sim._pods.mount_tokens(pod, container),
            PodRefused,
            f"pod {pod['metadata']['name']} has no token",
        )

    def _run_container(
        self, job: Job, container: Job, pod_name: str, mounts: dict[str, Path]
    ) -> tuple[str, str, int]:
        pod_spec = job["spec"]["template"]["spec"]
        env, argv = self._container_config(job, container, pod_name)
        env = {key: map_path(value, mounts) for key, value in env.items()}
        number = len(self._sim.attempts(self._namespace, self._name)) + 1
        log_path = self._sim.log_dir / self._namespace / self._name / f"{number}-{pod_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=container.get("workingDir"),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            except OSError as exc:  # what a runtime reports as StartError, exit code 128
                out.write(f"nodesim: cannot start {argv!r}: {exc}\n".encode())
                return container["name"], pod_name, 128
        attempt = Attempt(self._namespace, self._name, number, pod_name, log_path, proc.pid)
        self._sim._record_started(attempt, proc)
        log.info(
            "Job %s/%s attempt %d started: pid %d", self._namespace, self._name, number, proc.pid
        )
        grace = float(pod_spec.get("terminationGracePeriodSeconds", _DEFAULT_GRACE_SECONDS))
        try:
            self._wait_process(proc, grace)
        finally:
            _kill_group(proc, signal.SIGKILL)  # a container's leftovers die with its main process
            exit_code = _exit_code(proc.wait())
            self._sim._record_exited(attempt, exit_code)
            log.info(
                "Job %s/%s attempt %d exited with %d",
                self._namespace,
                self._name,
                number,
                exit_code,
            )
        return container["name"], pod_name, exit_code

    def _wait_process(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """Report the pod ready, then wait for the exit or act on an interrupt like a kubelet."""
        try:
            self._update_status(_mark_pod_ready)
            while proc.poll() is None:
                self._check_interrupts()
                with self._changed:
                    self._changed.wait(_POLL_SECONDS)
            if self._sim._stopping.is_set():
                raise _Stopped
        except _Stopped:
            _kill_group(proc, signal.SIGKILL)
            raise
        except _Gone:
            self._terminate(proc, grace)
            raise
        except _SuspendRequested:  # the deleted pod still counts (failed, usually) as it ends
            self._terminate(proc, grace)
        except _DeadlineExceeded as exc:
            self._update_status(_mark_deadline_target)
            self._terminate(proc, grace)
            raise _DeadlineExceeded(killed=True) from exc

    def _terminate(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM the process group, SIGKILL after the grace period (or at once on node loss)."""
        _kill_group(proc, signal.SIGTERM)
        end = time.monotonic() + grace
        while proc.poll() is None:
            if self._sim._stopping.is_set() or time.monotonic() >= end:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL_SECONDS)

    def _container_config(
        self, job: Job, container: Job, pod_name: str
    ) -> tuple[dict[str, str], list[str]]:
        """Resolve env and argv, waiting (pod pending) while a referenced object is missing."""

        def resolve() -> tuple[dict[str, str], list[str]]:
            defined = self._resolve_env(job, container, pod_name)
            argv = [
                _expand(a, defined)
                for a in [*container.get("command", []), *container.get("args", [])]
            ]
            if not argv:
                raise _PodConfigError("no command: the stand-in cannot run image entrypoints")
            return {**self._sim.base_env, **defined}, argv

        return self._until_accepted(resolve, _PodConfigError, f"pod {pod_name} cannot start")

    def _resolve_env(self, job: Job, container: Job, pod_name: str) -> dict[str, str]:
        defined: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            kind, ref = (
                ("ConfigMap", source["configMapRef"])
                if "configMapRef" in source
                else ("Secret", source["secretRef"])
            )
            data = self._sim._read_data(
                kind, self._namespace, ref["name"], bool(ref.get("optional"))
            )
            defined.update({prefix + key: value for key, value in data.items()})
        for var in container.get("env") or []:
            source = var.get("valueFrom")
            if source is None:
                defined[var["name"]] = _expand(var.get("value", ""), defined)
                continue
            value = self._value_from(job, source, pod_name)
            if value is not None:
                defined[var["name"]] = value
        return defined

    def _value_from(self, job: Job, source: Job, pod_name: str) -> str | None:
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                optional = bool(ref.get("optional"))
                data = self._sim._read_data(kind, self._namespace, ref["name"], optional)
                if ref["key"] in data:
                    return data[ref["key"]]
                if optional:
                    return None
                raise _PodConfigError(f'key "{ref["key"]}" not in {kind.lower()} "{ref["name"]}"')
        if "fieldRef" in source:
            return self._field(job, source["fieldRef"]["fieldPath"], pod_name)
        raise _PodConfigError(f"unsupported valueFrom {sorted(source)}")

    def _field(self, job: Job, path: str, pod_name: str) -> str:
        template = job["spec"]["template"]
        simple = {
            "metadata.name": pod_name,
            "metadata.namespace": self._namespace,
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": str(template["spec"].get("serviceAccountName", "default")),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((template["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
        raise _PodConfigError(f"unsupported fieldRef {path}")

    # -- status --------------------------------------------------------------------------------

    def _update_status(self, mutate: Callable[[Job], None]) -> Job:
        """Read-modify-write of the status subresource, retried on conflicts; no-op if equal."""
        for _ in range(_STATUS_RETRIES):
            if self._sim._stopping.is_set():
                raise _Stopped
            try:
                job = self._sim._read_job(self._namespace, self._name)
            except ApiException as exc:
                if exc.status == 404:
                    raise _Gone from exc
                raise
            if job["metadata"]["uid"] != self._uid:
                raise _Gone
            status = job.setdefault("status", {})
            before = copy.deepcopy(status)
            mutate(status)
            if status == before:
                return job
            try:
                return self._sim._replace_job_status(job)
            except ApiException as exc:
                if exc.status == 404:
                    raise _Gone from exc
                if exc.status != 409:
                    raise
        raise NodeSimError(f"status of Job {self._namespace}/{self._name} kept conflicting")

    def _record_exit(self, job: Job, container: str, pod_name: str, exit_code: int) -> bool:
        """Count the finished attempt; return True if the Job reached a terminal condition."""
        spec = job["spec"]
        completions = spec.get("completions")
        if completions is None:  # a work-queue Job: the first success completes it
            completions = 1
        backoff_limit = spec.get("backoffLimit", _DEFAULT_BACKOFF_LIMIT)
        action, message = _match_pod_failure_policy(
            spec.get("podFailurePolicy"), container, exit_code, self._namespace, pod_name
        )

        def mutate(status: Job) -> None:
            status.update(active=0, ready=0, terminating=0)
            if exit_code == 0:
                status["succeeded"] = status.get("succeeded", 0) + 1
                if status["succeeded"] >= completions:
                    reason, text = "CompletionsReached", "Reached expected number of succeeded pods"
                    _set_condition(status, "SuccessCriteriaMet", "True", reason, text)
                    _set_condition(status, "Complete", "True", reason, text)
                    status["completionTime"] = _now()
                return
            if action == "Ignore":
                return
            status["failed"] = status.get("failed", 0) + 1
            if action == "FailJob" and message is not None:
                _fail(status, "PodFailurePolicy", message)
            elif status["failed"] > backoff_limit:
                _fail(status, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

        return _is_finished(self._update_status(mutate))

    def _record_deadline(self, *, killed: bool) -> None:
        def mutate(status: Job) -> None:
            status.update(active=0, ready=0, terminating=0)
            if killed:
                status["failed"] = status.get("failed", 0) + 1
            _fail(status, "DeadlineExceeded", "Job was active longer than specified deadline")

        self._update_status(mutate)


def _fail(status: Job, reason: str, message: str) -> None:
    """FailureTarget first, then Failed with the same reason: the controller's two steps."""
    if not _condition_true(status, "FailureTarget"):
        _set_condition(status, "FailureTarget", "True", reason, message)
    target = _condition(status, "FailureTarget") or {}
    _set_condition(
        status, "Failed", "True", target.get("reason", reason), target.get("message", message)
    )


def _mark_suspended(status: Job) -> None:
    status.update(active=0, ready=0, terminating=0)
    _set_condition(status, "Suspended", "True", "JobSuspended", "Job suspended")


def _mark_pod_pending(status: Job) -> None:
    if _condition_true(status, "Suspended"):
        _set_condition(status, "Suspended", "False", "JobResumed", "Job resumed")
        status["startTime"] = _now()  # activeDeadlineSeconds counts from the resume
    elif not status.get("startTime"):
        status["startTime"] = _now()
    status.update(active=1, ready=0, terminating=0)


def _mark_pod_ready(status: Job) -> None:
    status.update(active=1, ready=1)


def _mark_deadline_target(status: Job) -> None:
    status.update(active=0, ready=0, terminating=1)
    _set_condition(
        status,
        "FailureTarget",
        "True",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run until SIGTERM/SIGINT (a node loss: running processes are killed)."""
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.nodesim")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True, help="one log file per attempt")
    parser.add_argument("--label-selector", default=DEFAULT_LABEL_SELECTOR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())
    load: Callable[..., client.ApiClient] = config.new_client_from_config  # it has no hints
    api_client = load(config_file=str(args.kubeconfig))
    with NodeSimulator(api_client, args.log_dir, label_selector=args.label_selector):
        print(f"node stand-in running; attempt logs in {args.log_dir}", flush=True)
        stop_requested.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
