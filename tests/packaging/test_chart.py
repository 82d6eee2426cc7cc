"""The Helm chart: lint, render, schema refusals, one truth for RBAC, settings it really sets.

Long (about 430 lines) for a reason: one test per rule the chart keeps, over the same rendered
value sets.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from regtask import naming, shards
from regtask.settings import Settings
from regtask_gateway.settings import GatewaySettings
from regtask_operator.config import OperatorSettings
from regtask_operator.jobs import RUNNER_UID
from regtask_shim.settings import ShimSettings
from tests.packaging.chart import (
    CHART,
    MANIFESTS,
    REPO_ROOT,
    VALUES_DIR,
    HelmMissing,
    Obj,
    container_env,
    find,
    helm,
    helm_binary,
    load_docs,
    one,
    render,
    template_args,
    value_set_id,
    value_sets,
)

VALUE_SETS = value_sets()
# Read by something other than the settings classes: the entrypoint, Kopf (peer identity),
# google-auth (service-account key) and firebase-admin (emulator).
EXTERNAL_ENV = {
    "CONTAINER_TYPE",
    "POD_ID",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "FIRESTORE_EMULATOR_HOST",
}


@pytest.fixture(scope="module", autouse=True)
def _helm_available() -> None:
    try:
        helm_binary()
    except HelmMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def aliases(model: type[Any]) -> set[str]:
    return {field.alias for field in model.model_fields.values() if field.alias}


def operator_env_names() -> set[str]:
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in OperatorSettings.model_fields}


def rendered(values: Path | None) -> list[Obj]:
    return render(values)


# ------------------------------------------------------------------ lint and render


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["-f", str(values)]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_template_renders_well_formed_objects(values: Path | None) -> None:
    objects = rendered(values)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "Role"} <= kinds
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two objects share kind, namespace and name"
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "regtask", obj["metadata"]["name"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_every_platform_pod_meets_restricted_pod_security(values: Path | None) -> None:
    for deployment in find(rendered(values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == RUNNER_UID
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["limits"] and container["resources"]["requests"]
            assert not container["image"].endswith(":latest")
            # Read-only root: /tmp is the one writable place.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_tenant_network_policy_reaches_the_gateway(values: Path | None) -> None:
    """The operator fences tenants with a NetworkPolicy naming the gateway's labels and port:
    they must be the gateway pods' real labels and port, and its URL must point at them. The
    metrics port is another one, behind its own Service (issue 16, item 7)."""
    objects = rendered(values)
    operator = container_env(find(objects, "Deployment", "operator")[0])  # each shard's alike
    gateway = one(objects, "Deployment", "gateway")
    services = {s["metadata"]["name"]: s for s in find(objects, "Service", "gateway")}
    [name] = [n for n in services if not n.endswith("-metrics")]
    service = services.pop(name)
    [metrics_service] = services.values()
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    selector = json.loads(operator["REGTASK_GATEWAY_POD_LABELS"]["value"])
    assert selector["app.kubernetes.io/name"] == "regtask-gateway"
    assert selector.items() <= pod_labels.items()
    port = int(operator["REGTASK_GATEWAY_PORT"]["value"])
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port and ports["metrics"] != port
    assert int(container_env(gateway)["REGTASK_GATEWAY_PORT"]["value"]) == port
    assert int(container_env(gateway)["REGTASK_GATEWAY_METRICS_PORT"]["value"]) == ports["metrics"]
    assert container_env(gateway)["REGTASK_GATEWAY_DOCS"]["value"] == "false"
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert [p["port"] for p in metrics_service["spec"]["ports"]] == [ports["metrics"]]
    url = operator["REGTASK_GATEWAY_URL"]["value"]
    namespace = gateway["metadata"]["namespace"]
    assert url == f"http://{service['metadata']['name']}.{namespace}.svc:{port}"


# ------------------------------------------------------------------ settings actually read


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_every_variable_the_chart_sets_is_read(values: Path | None) -> None:
    objects = rendered(values)
    shared = aliases(Settings)
    known = {
        "operator": shared | operator_env_names() | EXTERNAL_ENV,
        "shim": aliases(ShimSettings) | EXTERNAL_ENV,
        "gateway": aliases(GatewaySettings) | EXTERNAL_ENV,
    }
    for component, names in known.items():
        for deployment in find(objects, "Deployment", component):
            unknown = set(container_env(deployment)) - names
            assert not unknown, f"{component}: variables nothing reads: {sorted(unknown)}"


def literal_env(deployment: Obj) -> dict[str, str]:
    """The container's env as the process sees it; Secret references become placeholders."""
    env: dict[str, str] = {}
    for name, entry in container_env(deployment).items():
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[name] = "redis://from-secret:6379/0" if name == "REDIS_URL" else "s" * 40
    return env


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_operator_settings_parse_what_the_chart_sets(
    values: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered(values)
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values is not None:
        chart_values = merge(chart_values, yaml.safe_load(values.read_text()))
    env = literal_env(find(objects, "Deployment", "operator")[0])  # each shard's alike
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    op = chart_values["operator"]
    assert settings.rate_limit_policy.value == op["quotas"]["rateLimitPolicy"]
    assert settings.default_max_tasks_per_user == op["quotas"]["maxTasksPerUser"]
    assert settings.default_max_tasks_per_company == op["quotas"]["maxTasksPerCompany"]
    assert settings.default_max_llm_requests_per_hour == op["quotas"]["maxLlmRequestsPerHour"]
    assert settings.default_storage_limit_mb == op["quotas"]["storageLimitMb"]
    assert settings.namespace_idle_seconds == op["tenant"]["namespaceIdleSeconds"]
    assert settings.namespace_repair_interval_s == op["intervals"]["namespaceRepairSeconds"]
    assert settings.maintenance_interval_s == op["intervals"]["maintenanceSeconds"]
    assert settings.backoff_limit == op["jobs"]["backoffLimit"]
    assert settings.runner_memory_limit == op["jobs"]["resources"]["limits"]["memory"]
    assert settings.standalone is (not op["peering"]["enabled"])
    assert settings.image_pull_policy == chart_values["images"]["pullPolicy"]
    assert {k.value: v for k, v in settings.runner_images.items()} == chart_values["images"][
        "runnerByTaskType"
    ]
    shared = Settings()
    assert shared.unified_registry_enabled is chart_values["config"]["unifiedRegistryEnabled"]
    assert shared.registry_debug is chart_values["config"]["registryDebug"]
    firestore = chart_values["firestore"]
    assert shared.firestore_project_id == (firestore["projectId"] if firestore["enabled"] else None)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def test_shim_and_gateway_settings_parse_what_the_chart_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(Path(__file__).parent / "values" / "existing-secrets-firestore.yaml")
    for name, value in literal_env(one(objects, "Deployment", "shim")).items():
        monkeypatch.setenv(name, value)
    shim = ShimSettings()
    assert shim.auth_project_id() == "acme-prod-123"
    assert shim.firebase_check_revoked is True
    assert str(shim.service_token_file) == "/var/run/secrets/regtask/service-token/tokens"
    assert str(shim.firebase_credentials_file).endswith("/service-account.json")
    gateway_env = literal_env(one(objects, "Deployment", "gateway"))
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    gateway = GatewaySettings()  # required values come from the env
    assert gateway.llm_base_url == "https://llm.example.internal/v1"
    assert gateway.llm_api_key.get_secret_value()
    assert "FIRESTORE_PROJECT_ID" not in gateway_env  # the gateway gets no Firebase access


# ------------------------------------------------------------------ schema refusals


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--set", "operator.quotas.rateLimitPolicy=Sometimes"], "value must be one of 'Wait'"),
        (["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed"),
        (["--set", "operator.quotas.maxTasksPerUser=-1"], "/operator/quotas/maxTasksPerUser"),
        (["--set", "operator.quotas.storageLimitMb=-5"], "minimum: got -5, want 0"),
        (["--set", "operator.replicas=two"], "got string, want integer"),
        (["--set", "tokenSecret.value=a-signing-key-no-longer-used"], "tokenSecret"),
        (["--set", "images.runnerByTaskType.mining=x:1"], "additional properties 'mining'"),
        (["--set", "operator.tenant.namespaceIdleSeconds=0"], "minimum: got 0, want 1"),
        (["--set", "operator.intervals.namespaceRepairSeconds=0"], "namespaceRepairSeconds"),
        (["--set", "images.pullPolicy=Sometimes"], "/images/pullPolicy"),
        (["--set", "images.runner.tag=latest"], "/images/runner/tag"),
        (["--set", "redis.url=http://redis:6379"], "/redis/url"),
        (["--set-string", "gateway.port=8081"], "/gateway/port"),
        (["--set", "operator.replicas=2"], "needs operator.peering.enabled=true"),
        (["--set", "firestore.enabled=true"], "firestore.enabled=true needs firestore.projectId"),
        (
            ["--set", "metrics.operatorPort=0", "--set", "metrics.serviceMonitor.enabled=true"],
            "needs metrics.operatorPort",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v[-1],
)
def test_bad_values_are_refused_with_a_clear_message(overrides: list[str], message: str) -> None:
    result = helm(*template_args(None), *overrides)
    assert result.returncode != 0, f"accepted {overrides}"
    assert message in result.stderr, result.stderr


# ------------------------------------------------------------------ one truth for RBAC


def rules(objects: list[Obj], kind: str, component: str) -> list[Obj]:
    return list(one(objects, kind, component)["rules"])


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_operator_cluster_role_is_the_shipped_rbac(values: Path | None) -> None:
    shipped = load_docs(MANIFESTS / "rbac" / "operator.yaml")
    assert rules(rendered(values), "ClusterRole", "operator") == rules(
        shipped, "ClusterRole", "operator"
    )


def test_shipped_operator_rbac_is_what_the_operator_tests_run_under() -> None:
    """tests/fixtures/platform.py applies this file: SA regtask-system/regtask-operator."""
    docs = load_docs(MANIFESTS / "rbac" / "operator.yaml")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    account = docs[0]["metadata"]
    assert (account["namespace"], account["name"]) == ("regtask-system", "regtask-operator")
    binding = docs[2]
    assert binding["roleRef"]["name"] == docs[1]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "regtask-operator", "namespace": "regtask-system"}
    ]


def test_shim_and_gateway_roles_are_least_privilege() -> None:
    objects = rendered(None)
    assert rules(objects, "Role", "shim") == [
        {
            "apiGroups": ["regtask.io"],
            "resources": ["registrytasks"],
            "verbs": ["create", "get", "list", "patch"],
        },
        # the web console: quotas against usage, a task's history (read only)
        {"apiGroups": ["regtask.io"], "resources": ["companyquotas"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    assert rules(objects, "Role", "gateway") == [
        {"apiGroups": ["regtask.io"], "resources": ["registrytasks"], "verbs": ["get"]}
    ]
    # The shim is namespaced only; the gateway's one cluster-wide right is TokenReview (the
    # runners' tokens come from every tenant namespace), which reads nothing.
    assert not find(objects, "ClusterRole", "shim")
    assert rules(objects, "ClusterRole", "gateway") == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]


def test_images_run_as_the_jobs_uid() -> None:
    from tests.packaging.dockerfile_rules import IMAGE_UID

    assert IMAGE_UID == RUNNER_UID


# ------------------------------------------------------------------ optional pieces


def test_peering_objects_follow_the_peering_switch() -> None:
    default = rendered(None)
    assert not find(default, "ClusterKopfPeering")
    assert one(default, "Deployment", "operator")["spec"]["strategy"]["type"] == "Recreate"
    ha = render(Path(__file__).parent / "values" / "ha-peering.yaml")
    peering = one(ha, "ClusterKopfPeering")
    operator = container_env(one(ha, "Deployment", "operator"))
    assert operator["REGTASK_PEERING_NAME"]["value"] == peering["metadata"]["name"]
    assert operator["REGTASK_STANDALONE"]["value"] == "false"
    # The peering CRD ships in crds/ (installed before templates, so the object maps).
    crds = load_docs(CHART / "crds" / "kopf-peering.yaml")
    assert {c["metadata"]["name"] for c in crds} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert len(find(ha, "PodDisruptionBudget")) == 3


def test_operator_metrics_and_service_monitor() -> None:
    default = rendered(None)
    assert not find(default, "ServiceMonitor")
    service = one(default, "Service", "operator")
    operator = one(default, "Deployment", "operator")
    ports = {
        p["name"]: p["containerPort"]
        for p in operator["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports["metrics"] == service["spec"]["ports"][0]["port"] == 9090
    assert container_env(operator)["REGTASK_METRICS_PORT"]["value"] == "9090"
    objects = render(Path(__file__).parent / "values" / "metrics-custom-images.yaml")
    gateway_monitor = one(objects, "ServiceMonitor", "gateway")
    assert gateway_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert gateway_monitor["spec"]["selector"]["matchLabels"].items() <= (
        one(objects, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"].items()
    )
    monitor = one(objects, "ServiceMonitor", "operator")
    assert monitor["metadata"]["name"] == "regtask-operator"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        one(objects, "Service", "operator")["metadata"]["labels"].items()
    )
    off = render(None, extra=("--set", "metrics.operatorPort=0"))
    assert not find(off, "Service", "operator")
    assert container_env(one(off, "Deployment", "operator"))["REGTASK_METRICS_PORT"]["value"] == "0"


def test_the_chart_makes_no_secret_unless_given_a_value() -> None:
    """Runners' credentials are projected ServiceAccount tokens: no signing key to generate."""
    assert not find(rendered(None), "Secret")
    existing = render(Path(__file__).parent / "values" / "existing-secrets-firestore.yaml")
    assert not find(existing, "Secret")


def test_notes_tell_what_to_do_next() -> None:
    result = helm("install", "regtask", str(CHART), "-n", "regtask-system", "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for step in ("kind: CompanyQuota", "manifests/samples/", "get rt -w", "describe rt"):
        assert step in notes


# ------------------------------------------------------------------ shell scripts


def test_shellcheck_clean() -> None:
    scripts = sorted(str(p) for p in (REPO_ROOT / "hack").glob("*.sh"))
    scripts.append(str(REPO_ROOT / "docker" / "entrypoint.sh"))
    done = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def documented_grants(component: str) -> set[tuple[str, str]]:
    """(resource, verb) pairs of docs/PACKAGING.md's RBAC table rows for one component."""
    grants: set[tuple[str, str]] = set()
    for line in (REPO_ROOT / "docs" / "PACKAGING.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] != component:
            continue
        resources = re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cells[2]))
        verbs = re.findall(r"`([^`]+)`", cells[3].split(";")[0])
        grants |= {(resource, verb) for resource in resources for verb in verbs}
    return grants


def granted(rules_: list[Obj]) -> set[tuple[str, str]]:
    return {(r, v) for rule in rules_ for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_table_documents_exactly_the_granted_verbs() -> None:
    objects = rendered(None)
    assert documented_grants("operator") == granted(rules(objects, "ClusterRole", "operator"))
    assert documented_grants("shim") == granted(rules(objects, "Role", "shim"))
    assert documented_grants("gateway") == granted(rules(objects, "Role", "gateway")) | granted(
        rules(objects, "ClusterRole", "gateway")
    )


def test_grafana_dashboard_ships_the_operator_and_service_metrics() -> None:
    objects = render(None, extra=("--set", "metrics.grafanaDashboard.enabled=true"))
    [config_map] = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["regtask.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "regtask_tasks",
        "regtask_admission_wait_seconds_bucket",
        "regtask_quota_running_tasks",
        "regtask_job_duration_seconds_bucket",
        "regtask_llm_requests_total",
        "regtask_mirror_failures_total",
        "regtask_rpc_calls_total",
    ):
        assert metric in exprs
    assert not [o for o in render(None) if o["metadata"]["name"].endswith("-dashboard")]


def test_operator_confinement_holds_the_operator_as_the_code_names_it() -> None:
    """The chart's ValidatingAdmissionPolicies (issue 16, item 1) name the operator's
    ServiceAccount, the tenant namespaces and the Jobs exactly as the code does: a renamed
    prefix, label, runner ServiceAccount or image would otherwise refuse the operator's own
    calls (or let others through)."""
    llm_image = "ghcr.io/acme/llm-runner:1.2"
    objects = render(None, extra=("--set", f"images.runnerByTaskType.llm_conversation={llm_image}"))
    policies = {o["metadata"]["name"]: o for o in find(objects, "ValidatingAdmissionPolicy")}
    assert set(policies) == {
        "regtask-operator-namespaces",
        "regtask-operator-fences",
        "regtask-operator-jobs",
    }
    bindings = find(objects, "ValidatingAdmissionPolicyBinding")
    assert {b["spec"]["policyName"]: b["spec"]["validationActions"] for b in bindings} == {
        name: ["Deny"] for name in policies
    }
    [subject] = one(objects, "ClusterRoleBinding", "operator")["subjects"]
    user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    tenant = (
        f"startsWith('{naming.TENANT_NAMESPACE_PREFIX}-')",
        f"'{naming.LABEL_MANAGED_BY}'].orValue('') == '{naming.MANAGED_BY}'",
    )
    for policy in policies.values():
        spec = policy["spec"]
        assert spec["failurePolicy"] == "Fail"
        assert spec["matchConditions"] == [
            {"name": "the-operator-only", "expression": f'request.userInfo.username == "{user}"'}
        ]
        text = json.dumps(spec)
        assert all(part in text for part in tenant), policy["metadata"]["name"]
        assert all(v["reason"] == "Forbidden" for v in spec["validations"])
    jobs = policies["regtask-operator-jobs"]["spec"]
    variables = {v["name"]: v["expression"] for v in jobs["variables"]}
    assert json.loads(variables["runnerImages"]) == ["ghcr.io/regtask/runner:0.1.0", llm_image]
    assert f"'{naming.RUNNER_SERVICE_ACCOUNT}'" in json.dumps(jobs["validations"])
    assert naming.tenant_namespace("u", "c").startswith(f"{naming.TENANT_NAMESPACE_PREFIX}-")
    shipped = load_docs(MANIFESTS / "rbac" / "operator-confinement.yaml")
    assert [d["kind"] for d in shipped] == [
        *(["ValidatingAdmissionPolicy"] * 3),
        *(["ValidatingAdmissionPolicyBinding"] * 3),
    ]


def test_control_namespace_network_policies_fence_each_port() -> None:
    """Tenant namespaces (the operator's label) reach the gateway's API port and nothing else;
    every other namespace reaches the shim and the metrics ports (issue 16, item 11)."""
    objects = rendered(None)
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in find(objects, "NetworkPolicy")
    }
    assert set(policies) == {"shim", "gateway", "operator"}
    tenant = {"namespaceSelector": {"matchLabels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}}}
    not_tenant = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": naming.LABEL_MANAGED_BY, "operator": "NotIn", "values": [naming.MANAGED_BY]}
            ]
        }
    }

    def allowed(component: str) -> list[tuple[list[Obj], list[int]]]:
        spec = policies[component]
        assert spec["policyTypes"] == ["Ingress"]
        return [(r["from"], [p["port"] for p in r["ports"]]) for r in spec["ingress"]]

    assert allowed("gateway") == [([tenant], [8081]), ([not_tenant], [9092])]
    assert allowed("shim") == [([not_tenant], [8080])]
    assert allowed("operator") == [([not_tenant], [9090])]
    narrowed = render(
        None,
        extra=("--set-json", 'networkPolicy.shimFrom=[{"ipBlock":{"cidr":"10.0.0.0/8"}}]'),
    )
    [shim] = [p for p in find(narrowed, "NetworkPolicy", "shim")]
    assert shim["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    assert not find(render(None, extra=("--set", "networkPolicy.enabled=false")), "NetworkPolicy")


def test_each_component_may_connect_as_its_own_redis_user() -> None:
    """redis.components.<component>: that component's REDIS_URL from its own Secret (its Redis
    ACL user, regtask.redis_acl); the others keep the shared one (issue 16, item 11)."""
    objects = render(
        None,
        extra=(
            "--set",
            "redis.existingSecret=shared,redis.components.shim.existingSecret=shim-redis",
            "--set",
            "redis.components.gateway.existingSecret=gw-redis,"
            "redis.components.gateway.existingSecretKey=url",
        ),
    )
    refs = {
        component: container_env(one(objects, "Deployment", component))["REDIS_URL"]["valueFrom"][
            "secretKeyRef"
        ]
        for component in ("operator", "shim", "gateway")
    }
    assert refs == {
        "operator": {"name": "shared", "key": "redis-url"},
        "shim": {"name": "shim-redis", "key": "redis-url"},
        "gateway": {"name": "gw-redis", "key": "url"},
    }


def test_shards_render_one_operator_each_with_its_namespace_and_peering() -> None:
    """operator.shards=3: three Deployments that select only their own pods, each admitting the
    companies regtask.shards places in it, from its own control namespace, on its own peering
    object; the shim may create tasks in each shard namespace and places them with the same
    count."""
    objects = rendered(VALUES_DIR / "sharded.yaml")
    deployments = find(objects, "Deployment", "operator")
    assert len(deployments) == 3
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    peerings = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterKopfPeering"}
    shim_roles = {o["metadata"]["namespace"] for o in find(objects, "Role", "shim")}
    shim_bindings = {o["metadata"]["namespace"] for o in find(objects, "RoleBinding", "shim")}
    seen_peerings = set()
    for index, deployment in enumerate(deployments):
        env = literal_env(deployment)
        home = shards.control_namespace("regtask-system", index, 3)
        assert env["REGTASK_SHARD"] == str(index)
        assert env["REGTASK_SHARDS"] == "3"
        assert env["REGTASK_TASK_NAMESPACES"] == home
        assert home in namespaces and home in shim_roles and home in shim_bindings
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[shards.LABEL_SHARD] == str(index)
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        seen_peerings.add(env["REGTASK_PEERING_NAME"])
    assert seen_peerings == peerings and len(peerings) == 3
    assert literal_env(one(objects, "Deployment", "shim"))["REGTASK_SHARDS"] == "3"
    assert literal_env(one(objects, "Deployment", "gateway"))["REGTASK_SHARDS"] == "3"
    homes = set(shards.all_control_namespaces("regtask-system", 3))
    for kind in ("Role", "RoleBinding"):
        assert {o["metadata"]["namespace"] for o in find(objects, kind, "gateway")} == homes
