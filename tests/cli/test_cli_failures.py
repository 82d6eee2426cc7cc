"""What ``regtask`` says when it cannot do its job: one line on stderr, a documented exit code.

Real sockets only: a loopback port nobody listens on, an HTTP server that is not the shim.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from regtask_cli.errors import ExitCode
from regtask_cli.main import app
from regtask_dev.procs import free_port

pytestmark = pytest.mark.unit


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"REGTASK_SHIM_TOKEN": "t" * 40, **env})


def one_line_error(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_shim_unreachable_is_exit_3_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "t1"], ["list", "--user", "u"], ["cancel", "t1"]):
        result = run(*args, REGTASK_SHIM_URL=url)
        assert result.exit_code == ExitCode.UNREACHABLE, result.output
        assert one_line_error(result).startswith(f"error: shim unreachable at {url}")


def test_watch_without_redis_warns_and_still_needs_the_shim() -> None:
    result = run(
        "watch",
        "t1",
        "--user",
        "u",
        REGTASK_SHIM_URL=f"http://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert result.exit_code == ExitCode.UNREACHABLE
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("warning: no live events (Redis unreachable at redis://127.0.0.1:")
    assert error.startswith("error: shim unreachable")


class _NotTheShim(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def not_the_shim() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheShim)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_the_shim_is_named_as_such(not_the_shim: str) -> None:
    result = run("status", "t1", REGTASK_SHIM_URL=not_the_shim)
    assert result.exit_code == ExitCode.REFUSED
    assert "not a JSON object): is this the regtask shim?" in one_line_error(result)


def test_kubernetes_api_unreachable_is_exit_3(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: abc}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    result = run("quota", "acme", KUBECONFIG=str(kubeconfig))
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert one_line_error(result).startswith("error: Kubernetes API unreachable")


def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("hello")
    both = run(
        "submit", "document-analysis", "-u", "u", "-c", "c", "--text", "x", "--file", str(document)
    )
    assert both.exit_code == ExitCode.USAGE
    assert "exactly one of --file or --text" in both.output
    neither = run("submit", "document-analysis", "-u", "u", "-c", "c")
    assert neither.exit_code == ExitCode.USAGE
    assert "exactly one of --file or --text" in neither.output
    missing_user = run("watch", "t1")
    assert missing_user.exit_code == ExitCode.USAGE
