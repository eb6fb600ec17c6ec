"""deploy/: the Kubernetes manifest against a schema of the fields it uses, and the Dockerfile.

No network: the schema below is a hand-written subset of the Kubernetes OpenAPI schema
(apps/v1 Deployment, v1 Service) covering every field the manifest sets, with
``additionalProperties: false`` so a misspelt key fails.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [],
            "additionalProperties": False}  # fmt: skip


STR = {"type": "string"}
INT = {"type": "integer", "minimum": 0}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
INT_OR_STR = {"anyOf": [PORT, {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}]}
NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
LABELS = {"type": "object", "additionalProperties": STR}
QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9.]+(m|Mi|Gi|Ki)?$"}, INT]}
METADATA = _obj({"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": LABELS},
                ["name"])  # fmt: skip
PROBE = _obj(
    {
        "httpGet": _obj({"path": {"type": "string", "pattern": "^/"}, "port": INT_OR_STR,
                         "scheme": {"enum": ["HTTP", "HTTPS"]}}, ["path", "port"]),
        "initialDelaySeconds": INT, "periodSeconds": INT, "timeoutSeconds": INT,
        "failureThreshold": INT, "successThreshold": INT,
    },
    ["httpGet"],
)  # fmt: skip
CONTAINER = _obj(
    {
        "name": NAME, "image": STR,
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": STR}, "args": {"type": "array", "items": STR},
        "env": {"type": "array", "items": _obj({"name": STR, "value": STR}, ["name"])},
        "ports": {"type": "array", "items": _obj({"name": NAME, "containerPort": PORT,
                                                  "protocol": {"enum": ["TCP", "UDP"]}},
                                                 ["containerPort"])},
        "readinessProbe": PROBE, "livenessProbe": PROBE,
        "resources": _obj({"requests": _obj({"cpu": QUANTITY, "memory": QUANTITY}),
                           "limits": _obj({"cpu": QUANTITY, "memory": QUANTITY})}),
        "securityContext": _obj({"allowPrivilegeEscalation": {"type": "boolean"},
                                 "readOnlyRootFilesystem": {"type": "boolean"},
                                 "runAsNonRoot": {"type": "boolean"},
                                 "capabilities": _obj({"drop": {"type": "array", "items": STR}})}),
        "volumeMounts": {"type": "array", "items": _obj({"name": NAME, "mountPath": STR},
                                                        ["name", "mountPath"])},
    },
    ["name", "image"],
)  # fmt: skip
DEPLOYMENT = _obj(
    {
        "apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"}, "metadata": METADATA,
        "spec": _obj({
            "replicas": INT,
            "selector": _obj({"matchLabels": LABELS}, ["matchLabels"]),
            "template": _obj({
                "metadata": _obj({"labels": LABELS, "annotations": LABELS}),
                "spec": _obj({
                    "securityContext": _obj({"runAsNonRoot": {"type": "boolean"},
                                             "runAsUser": INT, "runAsGroup": INT}),
                    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                    "volumes": {"type": "array", "items": _obj({"name": NAME,
                                                                "emptyDir": {"type": "object"}},
                                                               ["name"])},
                }, ["containers"]),
            }, ["metadata", "spec"]),
        }, ["selector", "template"]),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)  # fmt: skip
SERVICE = _obj(
    {
        "apiVersion": {"const": "v1"}, "kind": {"const": "Service"}, "metadata": METADATA,
        "spec": _obj({
            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
            "selector": LABELS,
            "ports": {"type": "array", "minItems": 1, "items": _obj(
                {"name": NAME, "port": PORT, "targetPort": INT_OR_STR,
                 "protocol": {"enum": ["TCP", "UDP"]}}, ["port"])},
        }, ["selector", "ports"]),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)  # fmt: skip


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_manifest_validates_against_the_schema(manifests: dict[str, dict[str, Any]]) -> None:
    import jsonschema

    assert set(manifests) == {"Deployment", "Service"}
    jsonschema.validate(manifests["Deployment"], DEPLOYMENT)
    jsonschema.validate(manifests["Service"], SERVICE)
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, DEPLOYMENT)


def test_manifest_is_consistent(manifests: dict[str, dict[str, Any]]) -> None:
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert service["spec"]["ports"][0]["targetPort"] in ports
    args = container["args"]
    assert args[0].startswith("models:/") and args[args.index("--port") + 1] == str(ports["http"])
    assert "--host" in args  # binding beyond loopback is explicit
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in pod["spec"].get("volumes", [])}


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_is_multi_stage_non_root_and_serves() -> None:
    known = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD", "ARG", "LABEL"}  # fmt: skip
    steps = _instructions((DEPLOY / "Dockerfile").read_text())
    assert {k for k, _ in steps} <= known
    stages = [rest.split() for k, rest in steps if k == "FROM"]
    assert len(stages) >= 2 and all(len(s) == 3 and s[1].upper() == "AS" for s in stages)
    builder = stages[0][2]
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    assert any(k == "COPY" and rest.startswith(f"--from={builder}") for k, rest in final)
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8000") in final
    import json

    entry = json.loads(next(rest for k, rest in final if k == "ENTRYPOINT"))
    cmd = json.loads(next(rest for k, rest in final if k == "CMD"))
    assert entry == ["hamnet", "serve"] and "--host" in cmd
    assert shlex.split(" ".join(cmd))[0].startswith("models:/")
    assert any(k == "HEALTHCHECK" and "/health" in rest for k, rest in final)


def test_deploy_arguments_are_options_of_hamnet_serve(
    manifests: dict[str, dict[str, Any]],
) -> None:
    import json

    import typer

    from hamnet.ops.cli import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    options = {o for p in serve.params for o in getattr(p, "opts", [])}
    steps = _instructions((DEPLOY / "Dockerfile").read_text())
    cmd = json.loads(next(rest for k, rest in steps if k == "CMD"))
    args = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    for given in (cmd, args):
        assert {a for a in given if a.startswith("--")} <= options
