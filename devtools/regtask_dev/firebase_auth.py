"""A throwaway Firebase Auth emulator (``firebase emulators:start --only auth``) on loopback.

The Auth emulator is plain Node inside firebase-tools (no Java, nothing downloaded at start).
firebase-tools comes from npm, installed by ``hack/install-firebase-tools.sh`` into
``~/.cache/regtask/firebase-tools/<version>``. Each emulator gets a private work dir holding its
``firebase.json`` (auth, hub and logging ports all free loopback ports, no UI), its config store
and its temp dir, and runs in its own session so ``stop()`` takes the whole group down.

The emulator issues real Firebase-format ID tokens, unsigned (``alg: none``): firebase-admin
accepts them only while ``FIREBASE_AUTH_EMULATOR_HOST`` points at the emulator. The helpers
here play the client SDK (sign up, sign in, refresh) over the emulator's REST API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from regtask_dev.procs import EmulatorServer, free_port

EMULATOR_HOST_ENV = "FIREBASE_AUTH_EMULATOR_HOST"
# Pinned in hack/install-firebase-tools.sh too (a test checks both say the same).
FIREBASE_TOOLS_VERSION = "15.34.2"
# The emulator accepts any API key; this is the one Firebase's docs use.
API_KEY = "fake-api-key"


def default_firebase_bin() -> Path:
    """Where ``hack/install-firebase-tools.sh`` puts the CLI (same defaults as the script)."""
    cache = os.environ.get("REGTASK_FIREBASE_TOOLS_DIR") or str(
        Path.home() / ".cache/regtask/firebase-tools"
    )
    return Path(cache) / FIREBASE_TOOLS_VERSION / "node_modules/.bin/firebase"


def find_firebase() -> Path:
    """``$REGTASK_FIREBASE_BIN``, then the install script's cache, then ``firebase`` on $PATH."""
    candidates = [Path(p) for p in (os.environ.get("REGTASK_FIREBASE_BIN"),) if p]
    candidates.append(default_firebase_bin())
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("firebase")
    if on_path:
        return Path(on_path)
    raise RuntimeError(
        f"firebase-tools not found ({', '.join(map(str, candidates))} or firebase on $PATH): "
        "run hack/install-firebase-tools.sh (installs firebase-tools "
        f"{FIREBASE_TOOLS_VERSION} from npm into ~/.cache/regtask/firebase-tools) "
        "or set REGTASK_FIREBASE_BIN"
    )


class EmulatorRequestError(RuntimeError):
    """The emulator answered a REST call with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"auth emulator answered HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class SignedIn:
    """What the client SDK holds after a sign-in."""

    uid: str
    id_token: str
    refresh_token: str


class FirebaseAuthEmulator(EmulatorServer):
    name = "firebase auth emulator"
    dir_prefix = "regtask-firebase-auth-"
    log_name = "firebase-auth-emulator.log"
    ready_interval_s = 0.2

    def __init__(
        self,
        port: int | None = None,
        project_id: str = "demo-regtask-auth",
        *,
        workdir: Path | None = None,
        # ~15 s of CPU on an idle 2-core machine; generous for a machine loaded by other tests.
        start_timeout_s: float = 180.0,
    ) -> None:
        # A "demo-" project: firebase-tools then never reaches for real Google services.
        super().__init__(port, project_id, workdir=workdir, start_timeout_s=start_timeout_s)
        self.hub_port = free_port()
        self.logging_port = free_port()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.hub_port, self.logging_port)

    def _write_config(self) -> Path:
        config = {
            "emulators": {
                "auth": {"host": "127.0.0.1", "port": self.port},
                "hub": {"host": "127.0.0.1", "port": self.hub_port},
                "logging": {"host": "127.0.0.1", "port": self.logging_port},
                "ui": {"enabled": False},
                "singleProjectMode": True,
            }
        }
        path = self.workdir / "firebase.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _env(self) -> dict[str, str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        return {
            # Private config store (no login, no usage reporting) and temp dir (hub locator).
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "TMPDIR": str(tmp),
            # No update check, no message-of-the-day fetch: the machine has loopback only.
            "NO_UPDATE_NOTIFIER": "1",
            "CI": "true",
        }

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """One REST call to the emulator; raises :class:`EmulatorRequestError` on HTTP errors."""
        headers = {"Content-Type": "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://{self.host}{path}", data=data, method=method, headers=headers
        )
        try:
            # A fixed http://127.0.0.1 URL, never a user-supplied scheme.
            with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail)
            raise EmulatorRequestError(exc.code, detail) from None
        parsed: dict[str, Any] = json.loads(raw) if raw else {}
        return parsed

    def _answers(self) -> bool:
        try:
            answer = self.request("GET", "/", timeout_s=1.0)
        except (OSError, EmulatorRequestError, ValueError):
            return False
        return bool(answer.get("authEmulator", {}).get("ready"))

    def _command(self) -> list[str]:
        binary = find_firebase()
        config = self._write_config()
        return [
            str(binary),
            "emulators:start",
            "--only",
            "auth",
            "--project",
            self.project_id,
            "--config",
            str(config),
        ]

    def start(self) -> Self:
        try:
            return super().start()
        except BaseException:
            # ``with`` never reaches __exit__ when start fails: leave no process, no temp dir.
            self.close()
            raise

    # ------------------------------------------------------------ what a client app does

    def clear(self) -> None:
        """Delete every account of the project (between tests)."""
        self.request("DELETE", f"/emulator/v1/projects/{self.project_id}/accounts")

    def sign_up(self, email: str, password: str) -> SignedIn:
        """``accounts:signUp`` as the client SDK calls it: a new user, signed in."""
        return self._password_call("signUp", email, password)

    def sign_in(self, email: str, password: str) -> SignedIn:
        """``accounts:signInWithPassword``: a fresh ID token carrying the current claims."""
        return self._password_call("signInWithPassword", email, password)

    def _password_call(self, method: str, email: str, password: str) -> SignedIn:
        answer = self.request(
            "POST",
            f"/identitytoolkit.googleapis.com/v1/accounts:{method}?key={API_KEY}",
            {"email": email, "password": password, "returnSecureToken": True},
        )
        return SignedIn(answer["localId"], answer["idToken"], answer["refreshToken"])

    def refresh(self, refresh_token: str) -> str:
        """``securetoken`` refresh: the ID token the SDK's ``getIdToken(true)`` returns."""
        answer = self.request(
            "POST",
            f"/securetoken.googleapis.com/v1/token?key={API_KEY}",
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
        )
        token: str = answer["id_token"]
        return token
