"""Rendering the Helm chart and reading the plain manifests, for the packaging tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "regtask"
MANIFESTS = REPO_ROOT / "manifests"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "regtask"
NAMESPACE = "regtask-system"

Obj = dict[str, Any]


class HelmMissing(RuntimeError):
    pass


@cache
def helm_binary() -> str:
    """helm from REGTASK_TOOLS_BIN (set by `make test`), hack/install-k8s-tools.sh, or PATH."""
    candidates: list[str] = []
    if os.environ.get("REGTASK_TOOLS_BIN"):
        candidates.append(str(Path(os.environ["REGTASK_TOOLS_BIN"]) / "helm"))
    printed = subprocess.run(
        [str(REPO_ROOT / "hack" / "install-k8s-tools.sh"), "--print-bin"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if printed:
        candidates.append(str(Path(printed) / "helm"))
    candidates.append(shutil.which("helm") or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HelmMissing("helm not found: run hack/install-k8s-tools.sh (or set REGTASK_TOOLS_BIN)")


def value_sets() -> list[Path | None]:
    """None = the chart's defaults, then every file of tests/packaging/values/."""
    return [None, *sorted(VALUES_DIR.glob("*.yaml"))]


def value_set_id(values: Path | None) -> str:
    return "defaults" if values is None else values.stem


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def helm(*args: str) -> HelmResult:
    done = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120
    )
    return HelmResult(done.returncode, done.stdout, done.stderr)


def template_args(
    values: Path | None, namespace: str = NAMESPACE, extra: tuple[str, ...] = ()
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    return [*args, *extra]


def render(
    values: Path | None, namespace: str = NAMESPACE, extra: tuple[str, ...] = ()
) -> list[Obj]:
    """Every object `helm template` renders (fails the caller's test on a helm error)."""
    result = helm(*template_args(values, namespace, extra))
    if result.returncode != 0:
        raise AssertionError(f"helm template failed ({value_set_id(values)}):\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization_resources(directory: Path) -> list[Path]:
    """The files a kustomization.yaml lists (plain resources only: no generators here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, kustomization
    return [directory / entry for entry in kustomization["resources"]]


def manifests_objects() -> list[Obj]:
    """What `kubectl apply -k manifests/` applies, in the kustomization's order."""
    return [doc for path in kustomization_resources(MANIFESTS) for doc in load_docs(path)]


def find(objects: list[Obj], kind: str, component: str | None = None) -> list[Obj]:
    out = [o for o in objects if o["kind"] == kind]
    if component is not None:
        out = [
            o
            for o in out
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component
        ]
    return out


def one(objects: list[Obj], kind: str, component: str | None = None) -> Obj:
    found = find(objects, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


def container_env(deployment: Obj) -> dict[str, Obj]:
    """name -> env entry of the Deployment's first container (later duplicates win)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry for entry in container.get("env") or []}
