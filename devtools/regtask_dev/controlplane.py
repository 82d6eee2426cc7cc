"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback for tests and local runs.

This is the envtest approach: the real API server with its validation, admission, RBAC and
watch semantics, but no kubelet and no controller-manager. Consequences worth knowing:

* nothing runs Pods and no controller acts on Jobs (``regtask_dev.nodesim`` stands in),
* namespaces get no ``default`` ServiceAccount (so ``ServiceAccount`` admission is disabled)
  and deleted namespaces stay ``Terminating`` (no namespace controller),
* there is no garbage collector: delete with ``propagationPolicy=Background`` or objects
  keep an ``orphan``/``foregroundDeletion`` finalizer forever.

Binaries come from ``hack/install-k8s-tools.sh``. Usage::

    with ControlPlane() as cp:
        client = kubernetes.config.new_client_from_config(str(cp.kubeconfig_path))

or ``python -m regtask_dev.controlplane up --dir DIR`` to keep one running in the foreground.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import http.client
import ipaddress
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from regtask_dev.lifeline import die_with_parent
from regtask_dev.procs import free_port, stop_process, tail

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
_ADMIN_USER = "regtask-admin"
_STARTUP_ATTEMPTS = 3  # a free port can be taken by someone else between probe and bind


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or used."""


class MissingBinariesError(ControlPlaneError):
    """kube-apiserver or etcd is not installed where we look for it."""


class _PortTakenError(ControlPlaneError):
    """A port picked as free was bound by someone else before our server bound it."""


def default_tools_bin() -> Path:
    """The bin dir that ``hack/install-k8s-tools.sh`` fills (same defaults as the script)."""
    tools_dir = os.environ.get("REGTASK_TOOLS_DIR") or str(Path.home() / ".cache/regtask/tools")
    return Path(tools_dir) / "bin"


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables."""

    kube_apiserver: Path
    etcd: Path

    @classmethod
    def find(cls) -> Binaries:
        """Look in ``$REGTASK_TOOLS_BIN``, then the tools cache bin dir, then ``$PATH``."""
        search = [Path(p) for p in (os.environ.get("REGTASK_TOOLS_BIN"),) if p]
        search.append(default_tools_bin())
        found: dict[str, Path] = {}
        for name in ("kube-apiserver", "etcd"):
            candidates = [d / name for d in search if (d / name).is_file()]
            on_path = shutil.which(name)
            if candidates:
                found[name] = candidates[0]
            elif on_path:
                found[name] = Path(on_path)
        missing = sorted({"kube-apiserver", "etcd"} - found.keys())
        if missing:
            raise MissingBinariesError(
                f"{', '.join(missing)} not found in {', '.join(map(str, search))} or $PATH; "
                "run hack/install-k8s-tools.sh (builds them into ~/.cache/regtask/tools) "
                "or set REGTASK_TOOLS_BIN"
            )
        return cls(kube_apiserver=found["kube-apiserver"], etcd=found["etcd"])


@dataclass(frozen=True)
class _Credential:
    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _CertificateAuthority:
    """A throwaway CA: the apiserver's serving cert, client certs and the client CA in one."""

    def __init__(self) -> None:
        self.key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regtask-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
    ) -> _Credential:
        """Sign a leaf cert: a client cert (CN=user, O=groups) or the loopback serving cert."""
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_private(path: Path, data: bytes) -> None:
    """Write key material readable by the owner only, atomically (readers poll for the file)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with an admin kubeconfig.

    ``work_dir=None`` uses a temp dir that ``stop()`` removes. A given ``work_dir`` belongs to
    the caller: ``stop()`` removes only the etcd data and keeps the logs for diagnosis.
    The servers die with the thread that called ``start()`` (see ``lifeline``), so start it
    from a thread that lives as long as the control plane is needed.
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        binaries: Binaries | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._binaries = binaries
        self._given_work_dir = work_dir
        self._startup_timeout = startup_timeout
        self._work_dir: Path | None = None
        self._ca: _CertificateAuthority | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver, wait for ``/readyz``, write the admin kubeconfig."""
        binaries = self._binaries or Binaries.find()
        if self._given_work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="regtask-controlplane-"))
        else:
            self._work_dir = self._given_work_dir.resolve()
            self._work_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        began = time.monotonic()
        try:
            self._write_pki()
            for attempt in range(1, _STARTUP_ATTEMPTS + 1):
                try:
                    self._start_servers(binaries)
                    break
                except _PortTakenError:
                    self._stop_servers()
                    if attempt == _STARTUP_ATTEMPTS:
                        raise
                    log.warning("port taken during startup, retrying with new ports")
            self._write_kubeconfig(self.kubeconfig_path, _ADMIN_USER, self._admin_credential())
        except BaseException:
            self.stop()
            raise
        log.info(
            "control plane ready at %s in %.1f s (kubeconfig %s)",
            self.server_url,
            time.monotonic() - began,
            self.kubeconfig_path,
        )
        return self

    def stop(self) -> None:
        """Terminate both servers (SIGTERM, then SIGKILL) and remove the etcd data. Idempotent."""
        with self._lock:
            atexit.unregister(self.stop)
            self._stop_servers()
            if self._work_dir is None:
                return
            if self._given_work_dir is None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
                self._work_dir = None
            else:
                shutil.rmtree(self._work_dir / "etcd-data", ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- public accessors ----------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise ControlPlaneError("control plane is not started")
        return self._work_dir

    @property
    def server_url(self) -> str:
        if self._port is None:
            raise ControlPlaneError("control plane is not started")
        return f"https://127.0.0.1:{self._port}"

    @property
    def kubeconfig_path(self) -> Path:
        """Admin (``system:masters``) kubeconfig; it exists only once the apiserver is ready."""
        return self.work_dir / "kubeconfig.yaml"

    @property
    def ca_cert_path(self) -> Path:
        return self.work_dir / "pki" / "ca.crt"

    @property
    def apiserver_log(self) -> Path:
        return self.work_dir / "logs" / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.work_dir / "logs" / "etcd.log"

    def kubeconfig_for(
        self, user: str, groups: Sequence[str] = (), *, path: Path | None = None
    ) -> Path:
        """Write a kubeconfig that authenticates as ``user`` in ``groups`` with a client cert.

        A cert rather than ``as:``/``as-groups:`` impersonation fields, because the Python
        client and kopf silently ignore those fields and would act as admin. RBAC sees the same
        user either way; for a ServiceAccount pass its ``system:serviceaccount:NS:NAME`` and
        the ``system:serviceaccounts[:NS]`` groups, or use ``service_account_kubeconfig``.
        """
        ca = self._require_ca()
        target = path or self.work_dir / "kubeconfigs" / f"{_safe_name(user)}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig(target, user, ca.issue(user, groups))
        return target

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, path: Path | None = None, expiration_seconds: int = 3600
    ) -> Path:
        """Write a kubeconfig with a real ServiceAccount token (TokenRequest API).

        The ServiceAccount must exist. The token is what a Pod running as that ServiceAccount
        would get, so the apiserver authenticates it exactly like in a cluster.
        """
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        response = self._admin_request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        token = str(json.loads(response)["status"]["token"])
        target = path or self.work_dir / "kubeconfigs" / f"sa-{namespace}-{name}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig(target, f"system:serviceaccount:{namespace}:{name}", token)
        return target

    def get(self, path: str) -> bytes:
        """GET a raw path as admin, e.g. ``/readyz?verbose``; raises on a non-2xx answer."""
        return self._admin_request("GET", path)

    # -- internals -----------------------------------------------------------------------------

    def _require_ca(self) -> _CertificateAuthority:
        if self._ca is None:
            raise ControlPlaneError("control plane is not started")
        return self._ca

    def _admin_credential(self) -> _Credential:
        pki = self.work_dir / "pki"
        return _Credential((pki / "admin.crt").read_bytes(), (pki / "admin.key").read_bytes())

    def _write_pki(self) -> None:
        pki = self.work_dir / "pki"
        pki.mkdir(exist_ok=True)
        ca = self._ca = _CertificateAuthority()
        (pki / "ca.crt").write_bytes(ca.cert_pem)
        serving = ca.issue("kube-apiserver", server=True)
        (pki / "apiserver.crt").write_bytes(serving.cert_pem)
        _write_private(pki / "apiserver.key", serving.key_pem)
        admin = ca.issue(_ADMIN_USER, ["system:masters"])
        (pki / "admin.crt").write_bytes(admin.cert_pem)
        _write_private(pki / "admin.key", admin.key_pem)
        sa_key = _new_key()
        _write_private(pki / "sa.key", _key_pem(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(exist_ok=True)
        with log_path.open("wb") as log_file:  # a retry must not see the last attempt's errors
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )

    def _start_servers(self, binaries: Binaries) -> None:
        etcd_port, peer_port, port = free_port(), free_port(), free_port()
        self._port = port
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = self.work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        self._etcd = self._spawn(
            [
                str(binaries.etcd),
                "--name=regtask",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=regtask={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: durability only costs time
                "--log-level=warn",
            ],
            self.etcd_log,
        )
        self._wait("etcd", lambda: _http_ok(f"127.0.0.1:{etcd_port}", "/health", None))
        pki = self.work_dir / "pki"
        self._apiserver = self._spawn(
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # No controller-manager creates `default` ServiceAccounts, so this plugin would
                # reject every Pod; nothing else in it matters without a kubelet.
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
            ],
            self.apiserver_log,
        )
        context = self._admin_ssl_context()
        self._wait("kube-apiserver", lambda: _http_ok(f"127.0.0.1:{port}", "/readyz", context))

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if proc is not None and proc.poll() is not None:
                    self._raise_startup_error(f"{name} exited with code {proc.returncode}")
            if ready():
                return
            time.sleep(0.1)
        self._raise_startup_error(f"{what} not ready after {self._startup_timeout:.0f} s")

    def _raise_startup_error(self, reason: str) -> None:
        logs = {
            name: tail(path)
            for name, path in (("etcd", self.etcd_log), ("kube-apiserver", self.apiserver_log))
        }
        error = (
            _PortTakenError
            if any("address already in use" in text for text in logs.values())
            else ControlPlaneError
        )
        details = "\n".join(
            f"--- {name} log ({path}) ---\n{logs[name]}"
            for name, path in (("etcd", self.etcd_log), ("kube-apiserver", self.apiserver_log))
        )
        raise error(f"control plane failed to start: {reason}\n{details}")

    def _stop_servers(self) -> None:
        for proc in (self._apiserver, self._etcd):  # apiserver first: it talks to etcd
            if proc is not None:
                stop_process(proc, grace_s=10.0)
        self._apiserver = self._etcd = None

    def _admin_ssl_context(self) -> ssl.SSLContext:
        pki = self.work_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def _admin_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self._port, context=self._admin_ssl_context(), timeout=30
        )
        try:
            if body is None:
                conn.request(method, path)
            else:
                conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise ControlPlaneError(f"{method} {path}: HTTP {response.status}: {payload!r}")
        return payload

    def _write_kubeconfig(self, path: Path, user: str, auth: _Credential | str) -> None:
        if isinstance(auth, str):
            user_entry: dict[str, str] = {"token": auth}
        else:
            user_entry = {
                "client-certificate-data": _b64(auth.cert_pem),
                "client-key-data": _b64(auth.key_pem),
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "regtask",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": _b64(self._require_ca().cert_pem),
                    },
                }
            ],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": "regtask", "context": {"cluster": "regtask", "user": user}}],
            "current-context": "regtask",
        }
        # JSON is valid YAML; every kubeconfig reader (kubectl, kubernetes, kopf) accepts it.
        _write_private(path, json.dumps(config, indent=2).encode())


def _safe_name(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user)


def _http_ok(host_port: str, path: str, context: ssl.SSLContext | None) -> bool:
    host, port = host_port.split(":")
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _up(work_dir: Path) -> int:
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())
    with ControlPlane(work_dir) as cp:
        print(cp.kubeconfig_path, flush=True)
        stop_requested.wait()
        log.info("stopping control plane")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``up --dir DIR`` runs until SIGTERM/SIGINT and prints the kubeconfig path."""
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.controlplane")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run etcd + kube-apiserver until SIGTERM/SIGINT")
    up.add_argument("--dir", type=Path, required=True, help="work dir (logs, pki, kubeconfig)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return _up(args.dir)
    except ControlPlaneError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
