"""Generate the CRDs from the pydantic models: ``regtask-crdgen [--check]``.

Pydantic writes JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 subset: no
``$ref``, no ``anyOf`` for optionals, ``x-kubernetes-preserve-unknown-fields`` for free maps. The
conversion lives here, once; a test fails when the committed YAML differs from this output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    QUOTA_KIND,
    QUOTA_PLURAL,
    TASK_KIND,
    TASK_PLURAL,
    CompanyQuotaSpec,
    CompanyQuotaStatus,
    Phase,
    RegistryTaskSpec,
    RegistryTaskStatus,
)

_DROP = {"title", "$defs"}


@dataclass(frozen=True)
class CrdSpec:
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: list[dict[str, Any]]
    description: str
    # The status an object shows before any controller wrote one (applied by the apiserver on
    # every read): saves the operator one status write per object.
    status_default: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


CRDS = [
    CrdSpec(
        kind=TASK_KIND,
        plural=TASK_PLURAL,
        singular="registrytask",
        short_names=["rt", "rtask"],
        spec_model=RegistryTaskSpec,
        status_model=RegistryTaskStatus,
        status_default={"phase": Phase.QUEUED.value},
        description="A unit of background work (document analysis, embeddings, LLM chat) "
        "run as a Job in its tenant's isolated namespace.",
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Type", "type": "string", "jsonPath": ".spec.taskType"},
            {"name": "User", "type": "string", "jsonPath": ".spec.userId"},
            {"name": "Company", "type": "string", "jsonPath": ".spec.companyId"},
            {"name": "Progress", "type": "integer", "jsonPath": ".status.progress"},
            {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition"},
            {"name": "Task ID", "type": "string", "jsonPath": ".spec.taskId", "priority": 1},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
    CrdSpec(
        kind=QUOTA_KIND,
        plural=QUOTA_PLURAL,
        singular="companyquota",
        short_names=["cq"],
        spec_model=CompanyQuotaSpec,
        status_model=CompanyQuotaStatus,
        description="A company's limits: concurrent tasks per user, LLM requests per hour, "
        "storage.",
        printer_columns=[
            {"name": "Company", "type": "string", "jsonPath": ".spec.companyId"},
            {"name": "Tasks/User", "type": "integer", "jsonPath": ".spec.maxTasksPerUser"},
            {"name": "LLM/h", "type": "integer", "jsonPath": ".spec.maxLlmRequestsPerHour"},
            {"name": "Active", "type": "integer", "jsonPath": ".status.activeTasks"},
            {"name": "Waiting", "type": "integer", "jsonPath": ".status.waitingTasks"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
]


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converted: dict[str, Any] = _convert(raw, raw.get("$defs", {}))
    return converted


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        merged = {**variants[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        return _convert(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = _convert(value, defs)
            continue  # `false` is implied by a structural schema's pruning
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _convert(value, defs)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("format") == "date-time":
        out.setdefault("type", "string")
    return out


def _status_schema(model: type[BaseModel], default: dict[str, Any] | None) -> dict[str, Any]:
    schema = structural_schema(model)
    # Status models allow extra fields (Kopf's own bookkeeping may land there).
    schema["x-kubernetes-preserve-unknown-fields"] = True
    if default is not None:
        schema["default"] = default
    return schema


def build_crd(spec: CrdSpec) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": spec.name,
            "labels": {"app.kubernetes.io/part-of": "regtask"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": spec.kind,
                "listKind": f"{spec.kind}List",
                "plural": spec.plural,
                "singular": spec.singular,
                "shortNames": spec.short_names,
                "categories": ["regtask"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": spec.printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec.spec_model),
                                "status": _status_schema(spec.status_model, spec.status_default),
                            },
                        }
                    },
                }
            ],
        },
    }


def render(spec: CrdSpec) -> str:
    header = "# Generated by `regtask-crdgen` from common/regtask/crmodels.py: do not edit.\n"
    return header + yaml.safe_dump(build_crd(spec), sort_keys=False, width=100)


def output_paths(root: Path, spec: CrdSpec) -> list[Path]:
    filename = f"{spec.name}.yaml"
    return [root / "manifests" / "crds" / filename, root / "charts" / "regtask" / "crds" / filename]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if committed CRDs differ")
    args = parser.parse_args(argv)
    stale: list[Path] = []
    for spec in CRDS:
        text = render(spec)
        for path in output_paths(args.root, spec):
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        sys.stderr.write(
            "CRDs out of date, run `make crds`: " + ", ".join(str(p) for p in stale) + "\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
