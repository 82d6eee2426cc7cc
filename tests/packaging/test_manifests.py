"""Plain manifests (rendered from the chart), samples, Dockerfile rules and the entrypoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from regtask import naming
from regtask.crmodels import API_VERSION_FULL, CompanyQuotaSpec, RegistryTaskSpec
from regtask.tasktypes import TaskType
from tests.packaging import dockerfile_rules
from tests.packaging.chart import (
    MANIFESTS,
    REPO_ROOT,
    HelmMissing,
    helm_binary,
    kustomization_resources,
    load_docs,
)

SAMPLES = MANIFESTS / "samples"


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=300, env=env
    )


# ------------------------------------------------------------------ manifests/


def test_manifests_are_rendered_from_the_chart() -> None:
    try:
        helm = helm_binary()
    except HelmMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    done = run(
        str(REPO_ROOT / "hack" / "render-manifests.sh"),
        "--check",
        env={**os.environ, "HELM": helm},
    )
    assert done.returncode == 0, done.stderr


def test_kustomization_lists_every_manifest_and_crd() -> None:
    listed = {p.resolve() for p in kustomization_resources(MANIFESTS)}
    assert all(p.exists() for p in listed)
    on_disk = {
        p.resolve()
        for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml" and SAMPLES not in p.parents
    }
    assert listed == on_disk
    assert {p.resolve() for p in (MANIFESTS / "crds").glob("*.yaml")} <= listed


def test_manifests_are_plain_objects_in_the_control_namespace() -> None:
    for path in kustomization_resources(MANIFESTS):
        for obj in load_docs(path):
            labels = obj["metadata"].get("labels") or {}
            assert "helm.sh/chart" not in labels, f"{path.name}: Helm labels in plain manifests"
            if obj["kind"] not in {
                "Namespace",
                "CustomResourceDefinition",
                "ClusterRole",
                "ClusterRoleBinding",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            }:
                assert obj["metadata"]["namespace"] == "regtask-system", path.name
    namespace = load_docs(MANIFESTS / "namespace.yaml")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------------------------------------ samples


def sample_docs() -> list[tuple[Path, dict[str, object]]]:
    return [(path, doc) for path in kustomization_resources(SAMPLES) for doc in load_docs(path)]


def test_samples_cover_every_task_type_and_a_company_quota() -> None:
    tasks = [doc for _, doc in sample_docs() if doc["kind"] == "RegistryTask"]
    quotas = [doc for _, doc in sample_docs() if doc["kind"] == "CompanyQuota"]
    types = {RegistryTaskSpec.model_validate(t["spec"]).task_type for t in tasks}
    assert types == set(TaskType)
    assert len(quotas) == 1
    assert sorted(SAMPLES.glob("*.yaml")) == sorted(
        [*kustomization_resources(SAMPLES), SAMPLES / "kustomization.yaml"]
    )


def test_samples_are_named_as_the_shim_names_tasks() -> None:
    """The gateway finds a runner's task by the name derived from its task id."""
    for path, doc in sample_docs():
        assert doc["apiVersion"] == API_VERSION_FULL, path.name
        metadata = doc["metadata"]
        assert isinstance(metadata, dict) and metadata["namespace"] == "regtask-system"
        if doc["kind"] == "RegistryTask":
            spec = RegistryTaskSpec.model_validate(doc["spec"])
            assert metadata["name"] == naming.task_resource_name(spec.task_id), path.name
            for item in spec.inputs:
                if item.content_type == "application/json":
                    json.loads(item.value or "")
        else:
            spec_q = CompanyQuotaSpec.model_validate(doc["spec"])
            assert spec_q.company_id == "company_demo"


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_follows_the_project_rules() -> None:
    assert dockerfile_rules.violations() == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("USER 10001:10001", "USER root"), "target 'operator': USER root, expected 10001"),
        (("--extra runners --no-install-project", "--all-extras --no-install-project"), "runners"),
        (('"uv==${UV_VERSION}"', '"uv==${UV_VERSION}" --user'), ""),
        (("pip install --no-cache-dir", "pip install"), "pip install without --no-cache-dir"),
        (("HEALTHCHECK NONE", "EXPOSE 9"), "target 'runner': state HEALTHCHECK NONE explicitly"),
        (
            (
                "uv sync --frozen --no-dev --extra shim --no-install",
                "uv sync --extra shim --no-install",
            ),
            "uv sync needs --frozen and --no-dev",
        ),
        (("COPY --chmod=0755", "ADD --chmod=0755"), "use COPY"),
    ],
)
def test_dockerfile_rules_catch_mistakes(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    text = dockerfile_rules.DOCKERFILE.read_text()
    assert change[0] in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(change[0], change[1]))
    (tmp_path / ".dockerignore").write_text(dockerfile_rules.DOCKERIGNORE.read_text())
    problems = dockerfile_rules.violations(broken, tmp_path / ".dockerignore")
    if expected:
        assert any(expected in p for p in problems), problems
    else:
        assert problems == []  # a harmless change stays clean


def test_dockerfile_rules_catch_an_unpinned_base(tmp_path: Path) -> None:
    text = dockerfile_rules.DOCKERFILE.read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        re.sub(r"(?m)^ARG PYTHON_IMAGE=.*$", "ARG PYTHON_IMAGE=python:3.11-slim", text)
    )
    (tmp_path / ".dockerignore").write_text("*\n!.venv/\n")
    problems = dockerfile_rules.violations(broken, tmp_path / ".dockerignore")
    assert any("pin the base image by digest" in p for p in problems), problems
    assert ".dockerignore lets .venv into the build context" in problems


def test_hadolint_and_rules_pass() -> None:
    done = run(str(REPO_ROOT / "hack" / "lint-dockerfile.sh"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "project rules OK" in done.stdout


# ------------------------------------------------------------------ entrypoint


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """A `python` that prints its arguments, so the entrypoint's choices can be read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text('#!/bin/sh\necho "python $*"\n')
    stub.chmod(0o755)
    return bin_dir


def entrypoint(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{bin_dir}:/usr/bin:/bin"
    return run(str(REPO_ROOT / "docker" / "entrypoint.sh"), *args, env={"PATH": path, **env})


@pytest.mark.parametrize(
    ("mode", "args", "command"),
    [
        (
            "operator",
            ["--liveness", "http://0.0.0.0:8080/healthz"],
            "python -m regtask_operator --liveness http://0.0.0.0:8080/healthz",
        ),
        ("shim", [], "python -m regtask_shim"),
        ("gateway", [], "python -m regtask_gateway"),
        ("runner", ["document_analysis"], "python -m regtask_runners document_analysis"),
    ],
)
def test_entrypoint_runs_the_mode(
    fake_python: Path, mode: str, args: list[str], command: str
) -> None:
    done = entrypoint(fake_python, *args, CONTAINER_TYPE=mode)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == command


def test_entrypoint_refuses_a_mode_the_image_lacks(fake_python: Path) -> None:
    done = entrypoint(fake_python, CONTAINER_TYPE="operator", REGTASK_IMAGE_MODES="shim gateway")
    assert done.returncode == 64
    assert "CONTAINER_TYPE=operator is not served by this image" in done.stderr
    unset = entrypoint(fake_python)
    assert unset.returncode == 64 and "set CONTAINER_TYPE" in unset.stderr


def test_entrypoint_runs_an_explicit_command(fake_python: Path) -> None:
    done = entrypoint(fake_python, "python", "-c", "pass", CONTAINER_TYPE="runner")
    assert done.stdout.strip() == "python -c pass"


def test_entrypoint_healthcheck_probes_the_mode_port(fake_python: Path) -> None:
    done = entrypoint(fake_python, "healthcheck", CONTAINER_TYPE="gateway")
    assert done.stdout.strip().endswith("http://127.0.0.1:8081/healthz")
    shim = entrypoint(fake_python, "healthcheck", CONTAINER_TYPE="shim", SHIM_PORT="9000")
    assert shim.stdout.strip().endswith("http://127.0.0.1:9000/healthz")
    runner = entrypoint(fake_python, "healthcheck", CONTAINER_TYPE="runner")
    assert runner.returncode == 64
