"""The scale benchmark's envtest-shaped control plane: etcd + kube-apiserver on loopback.

Benchmark-only (``make bench-scale``; no test or demo uses it). Kueue's performance suite runs
on envtest, the real API server without kubelet, controller-manager or scheduler; this is the
same shape, restored from the host harness this repository used before kind. What is missing is
missing on purpose: no Job controller (``bench.job_completer`` finishes Jobs), no pods, no
namespace controller (a deleted namespace stays ``Terminating``), no garbage collector (delete
with ``propagationPolicy=Background``), and no ``default`` ServiceAccounts (their admission
plugin is off). Everything listens on 127.0.0.1 only; the certificates are throwaway.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from regtask_dev.kind import tool
from regtask_dev.procs import free_port, start_process, stop_process, tail

_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common)])


class EnvtestControlPlane:
    """etcd + kube-apiserver on free loopback ports; ``kubeconfig_path`` is an admin's."""

    def __init__(self, work_dir: Path | None = None) -> None:
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="regtask-envtest-"))
        self.pki = self.work_dir / "pki"
        self.port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        return self.work_dir / "kubeconfig.json"

    @property
    def apiserver_pid(self) -> int:
        return self._procs[-1].pid

    @property
    def pids(self) -> list[int]:
        """etcd's and kube-apiserver's, for their CPU time."""
        return [proc.pid for proc in self._procs]

    def start(self) -> EnvtestControlPlane:
        self._write_pki()
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._procs.append(
            start_process(
                [
                    tool("etcd"),
                    "--name=bench",
                    f"--data-dir={self.work_dir / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=bench={peer_url}",
                    "--unsafe-no-fsync",  # throwaway data, as envtest
                    "--quota-backend-bytes=8589934592",  # 50,000 tasks and their Jobs fit
                    "--log-level=warn",
                ],
                logs / "etcd.log",
            )
        )
        pki = self.pki
        self._procs.append(
            start_process(
                [
                    tool("kube-apiserver"),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer={_ISSUER}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--disable-admission-plugins=ServiceAccount",
                    "--endpoint-reconciler-type=none",
                ],
                logs / "kube-apiserver.log",
            )
        )
        self._write_kubeconfig(self.kubeconfig_path, "bench-admin", None)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"control plane exited\n{tail(logs / 'kube-apiserver.log')}")
            try:
                self.get("/readyz")
                return self
            except (OSError, RuntimeError):
                time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready\n{tail(logs / 'kube-apiserver.log')}")

    def stop(self) -> None:
        for proc in reversed(self._procs):  # the API server first: it talks to etcd
            stop_process(proc, grace_s=10)
        self._procs.clear()
        shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)

    def __enter__(self) -> EnvtestControlPlane:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def get(self, path: str) -> bytes:
        """GET a raw path as admin (``/metrics``, ``/readyz``)."""
        return self._request("GET", path)

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig with a real token of that ServiceAccount (TokenRequest API)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        answer = self._request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        target = self.work_dir / f"sa-{namespace}-{name}.json"
        self._write_kubeconfig(
            target,
            f"system:serviceaccount:{namespace}:{name}",
            json.loads(answer)["status"]["token"],
        )
        return target

    # ------------------------------------------------------------------ internals

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("regtask-bench-ca")
        files: dict[str, bytes] = {
            "ca.crt": _cert(ca_name, ca_key, ca_name, ca_key, ca=True),
        }
        for stem, subject, server in (
            ("apiserver", _name("kube-apiserver"), True),
            ("admin", _name("bench-admin", "system:masters"), False),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            files[f"{stem}.crt"] = _cert(subject, key, ca_name, ca_key, server=server)
            files[f"{stem}.key"] = _pem_key(key)
        sa = ec.generate_private_key(ec.SECP256R1())
        files["sa.key"] = _pem_key(sa)
        files["sa.pub"] = sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for file, data in files.items():
            (self.pki / file).write_bytes(data)
            (self.pki / file).chmod(0o600)

    def _write_kubeconfig(self, path: Path, user: str, token: str | None) -> None:
        def b64(file: str) -> str:
            return base64.b64encode((self.pki / file).read_bytes()).decode()

        creds = (
            {"token": token}
            if token
            else {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bench",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": b64("ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": user}}],
            "current-context": "bench",
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
        return data
