"""desired_objects: table-driven checks of every builder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.operator import resources as res
from shoal.operator import spec as api
from shoal.operator.settings import OperatorSettings

OWNER = res.Owner(name="iris", namespace="ml", uid="uid-123")
SETTINGS = OperatorSettings(default_image="ghcr.io/shoal-dev/shoal:0.1.0")


def build(raw: dict[str, Any], settings: OperatorSettings = SETTINGS, **kw: Any) -> dict[str, Any]:
    spec = api.parse_spec({"model": {"class": "examples.iris:Classifier"}, **raw})
    objs = res.desired_objects(spec, OWNER, settings, **kw)
    return {o["kind"]: o for o in objs}


def container(objs: dict[str, Any]) -> dict[str, Any]:
    (c,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env(objs: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def test_objects_kinds_names_and_owner() -> None:
    objs = res.desired_objects(api.parse_spec({"model": {"class": "a:B"}}), OWNER, SETTINGS)
    assert [o["kind"] for o in objs] == [
        "ServiceAccount",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ]
    for o in objs:
        md = o["metadata"]
        assert (md["name"], md["namespace"]) == ("iris", "ml")
        assert md["ownerReferences"] == [
            {
                "apiVersion": "serving.shoal.dev/v1alpha1",
                "kind": "ModelService",
                "name": "iris",
                "uid": "uid-123",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert md["labels"]["serving.shoal.dev/model"] == "iris"
        assert md["labels"]["app.kubernetes.io/managed-by"] == "shoal-operator"


def test_service_account_has_no_token() -> None:
    assert build({})["ServiceAccount"]["automountServiceAccountToken"] is False


def test_service_and_pdb_select_the_pods() -> None:
    objs = build({})
    sel = {"serving.shoal.dev/model": "iris"}
    assert objs["Service"]["spec"]["selector"] == sel
    assert objs["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]
    assert objs["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": sel},
    }
    dep = objs["Deployment"]["spec"]
    assert dep["selector"] == {"matchLabels": sel}
    assert sel.items() <= dep["template"]["metadata"]["labels"].items()


def test_runtime_contract_env_command_and_port() -> None:
    c = container(
        build(
            {
                "model": {
                    "class": "examples.iris:Classifier",
                    "uri": "file:///m/iris",
                    "config": {"threshold": 0.9},
                },
                "batching": {"maxBatchSize": 8, "batchWaitTimeoutMs": 2.5, "maxQueueSize": 99},
                "drain": {"gracePeriodSeconds": 12},
            }
        )
    )
    assert c["command"] == ["shoal", "serve"]
    assert c["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "SHOAL_MODEL_CLASS": "examples.iris:Classifier",
        "SHOAL_MODEL_NAME": "iris",
        "SHOAL_MODEL_URI": "file:///m/iris",
        "SHOAL_MODEL_CONFIG": json.dumps({"threshold": 0.9}),
        "SHOAL_HOST": "0.0.0.0",
        "SHOAL_PORT": "8000",
        "SHOAL_METRICS_PORT": "9090",
        "SHOAL_MAX_BATCH_SIZE": "8",
        "SHOAL_BATCH_WAIT_TIMEOUT_S": "0.0025",
        "SHOAL_MAX_QUEUE_SIZE": "99",
        "SHOAL_GRACE_PERIOD_S": "12",
        "SHOAL_DEVICE": "cpu",
    }


@pytest.mark.parametrize("mode", ["hard", "adaptive"])
def test_batch_wait_mode_reaches_the_runtime_only_when_set(mode: str) -> None:
    env = {e["name"]: e["value"] for e in container(build({}))["env"]}
    assert "SHOAL_BATCH_WAIT_MODE" not in env  # the model's decorator decides
    c = container(build({"batching": {"waitMode": mode}}))
    assert {e["name"]: e["value"] for e in c["env"]}["SHOAL_BATCH_WAIT_MODE"] == mode


@pytest.mark.parametrize(
    ("raw", "image", "pull"),
    [
        ({}, "ghcr.io/shoal-dev/shoal:0.1.0", None),
        ({"image": "reg.local/shoal:dev"}, "reg.local/shoal:dev", None),
        ({"imagePullPolicy": "Never"}, "ghcr.io/shoal-dev/shoal:0.1.0", "Never"),
    ],
)
def test_image_defaults_from_settings(raw: dict[str, Any], image: str, pull: str | None) -> None:
    c = container(build(raw))
    assert c["image"] == image
    assert c.get("imagePullPolicy") == pull


def test_probes_on_v2_health_with_startup_budget() -> None:
    c = container(build({"health": {"startupTimeoutSeconds": 900, "readinessPeriodSeconds": 3}}))
    assert c["livenessProbe"]["httpGet"] == {
        "path": "/v2/health/live",
        "port": "http",
        "scheme": "HTTP",
    }
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["periodSeconds"] == 3
    sp = c["startupProbe"]
    assert sp["httpGet"]["path"] == "/v2/health/ready"
    # The whole budget, no less: period x failureThreshold >= startupTimeoutSeconds.
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 900
    assert sp["periodSeconds"] * (sp["failureThreshold"] - 1) < 900


@pytest.mark.parametrize(("delay", "grace"), [(0, 1), (3, 30), (10, 600)])
def test_drain_prestop_and_grace_period(delay: int, grace: int) -> None:
    objs = build({"drain": {"delaySeconds": delay, "gracePeriodSeconds": grace}})
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs)
    if delay:
        assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": delay}}}
    else:
        assert "lifecycle" not in c
    # Kubernetes kills at terminationGracePeriodSeconds, counted from the start of preStop.
    assert pod["terminationGracePeriodSeconds"] > delay + grace
    assert env(objs)["SHOAL_GRACE_PERIOD_S"] == str(grace)


def test_hardened_pod() -> None:
    objs = build({})
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == SETTINGS.run_as_user != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "iris"
    assert c["terminationMessagePath"] == "/dev/termination-log"


GPU_TOL = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("resources", "requests", "limits", "tolerated", "device"),
    [
        ({}, None, None, False, "cpu"),
        ({"cpu": "500m"}, {"cpu": "500m"}, None, False, "cpu"),
        (
            {"cpu": 2, "memory": "4Gi"},
            {"cpu": "2", "memory": "4Gi"},
            {"memory": "4Gi"},
            False,
            "cpu",
        ),
        ({"gpu": 1}, None, {"nvidia.com/gpu": "1"}, True, "cuda"),
        (
            {"gpu": 2, "memory": "8Gi"},
            {"memory": "8Gi"},
            {"memory": "8Gi", "nvidia.com/gpu": "2"},
            True,
            "cuda",
        ),
    ],
)
def test_resources_and_gpu(
    resources: dict[str, Any],
    requests: dict[str, str] | None,
    limits: dict[str, str] | None,
    tolerated: bool,
    device: str,
) -> None:
    objs = build({"resources": resources})
    c = container(objs)
    assert c.get("resources", {}).get("requests") == requests
    assert c.get("resources", {}).get("limits") == limits
    tols = objs["Deployment"]["spec"]["template"]["spec"].get("tolerations", [])
    assert (GPU_TOL in tols) is tolerated
    assert env(objs)["SHOAL_DEVICE"] == device


def test_gpu_device_setting() -> None:
    objs = build({"resources": {"gpu": 1}}, settings=OperatorSettings(gpu_device="auto"))
    assert env(objs)["SHOAL_DEVICE"] == "auto"
    assert env(build({}, settings=OperatorSettings(gpu_device="auto")))["SHOAL_DEVICE"] == "cpu"


def test_gateway_url_setting_reaches_every_replica() -> None:
    assert "SHOAL_GATEWAY_URL" not in env(build({}))
    settings = OperatorSettings(gateway_url="http://shoal-gateway.shoal-system")
    assert env(build({}, settings=settings))["SHOAL_GATEWAY_URL"] == (
        "http://shoal-gateway.shoal-system"
    )


def test_scheduling_passthrough_and_no_duplicate_gpu_toleration() -> None:
    aff: dict[str, Any] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    objs = build(
        {
            "resources": {"gpu": 1},
            "scheduling": {
                "nodeSelector": {"pool": "a100"},
                "tolerations": [GPU_TOL, {"key": "spot", "operator": "Exists"}],
                "affinity": aff,
                "priorityClassName": "high",
            },
        }
    )
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [GPU_TOL, {"key": "spot", "operator": "Exists"}]
    assert pod["affinity"] == aff
    assert pod["priorityClassName"] == "high"


@pytest.mark.parametrize(
    ("raw", "replicas", "surge", "unavailable"),
    [
        ({}, 1, 1, 0),
        ({"replicas": 5}, 5, 1, 0),
        ({"rollout": {"maxSurge": "25%"}}, 1, "25%", 0),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}, 2, 1, 0),
        ({"replicas": 0}, 0, 1, 0),
    ],
)
def test_replicas_and_rollout_never_drop_capacity(
    raw: dict[str, Any], replicas: int, surge: int | str, unavailable: int | str
) -> None:
    dep = build(raw)["Deployment"]["spec"]
    assert dep["replicas"] == replicas
    assert dep["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }


@pytest.mark.parametrize(
    ("uri", "resolved", "expected_uri", "claim"),
    [
        ("pvc://models/iris/v2", None, "file:///mnt/models/iris/v2", "models"),
        ("pvc://models", None, "file:///mnt/models", "models"),
        ("models:/iris@champion", "models:/iris/7", "models:/iris/7", None),
        ("models:/iris/3", None, "models:/iris/3", None),
    ],
)
def test_model_uri_forms(
    uri: str, resolved: str | None, expected_uri: str, claim: str | None
) -> None:
    objs = build({"model": {"class": "a:B", "uri": uri}}, model_uri=resolved)
    assert env(objs)["SHOAL_MODEL_URI"] == expected_uri
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ([claim] if claim else [])
    if claim:
        assert {"name": "model-store", "mountPath": "/mnt/models", "readOnly": True} in container(
            objs
        )["volumeMounts"]


def test_mlflow_tracking_uri_given_to_registry_models_only() -> None:
    s = OperatorSettings(mlflow_tracking_uri="http://mlflow:5000")
    reg = build({"model": {"class": "a:B", "uri": "models:/iris/1"}}, settings=s)
    assert env(reg)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    plain = build({"model": {"class": "a:B", "uri": "file:///m"}}, settings=s)
    assert "MLFLOW_TRACKING_URI" not in env(plain)
    own = build(
        {
            "model": {"class": "a:B", "uri": "models:/iris/1"},
            "env": [{"name": "MLFLOW_TRACKING_URI", "value": "sqlite:///x.db"}],
        },
        settings=s,
    )
    assert [e for e in container(own)["env"] if e["name"] == "MLFLOW_TRACKING_URI"] == [
        {"name": "MLFLOW_TRACKING_URI", "value": "sqlite:///x.db"}
    ]


def test_registry_model_without_class() -> None:
    spec = api.parse_spec({"model": {"uri": "models:/iris/2"}})
    objs = {o["kind"]: o for o in res.desired_objects(spec, OWNER, SETTINGS)}
    names = [e["name"] for e in container(objs)["env"]]
    assert "SHOAL_MODEL_CLASS" not in names
    assert env(objs)["SHOAL_MODEL_URI"] == "models:/iris/2"


def test_user_env_after_contract() -> None:
    vf = {"secretKeyRef": {"name": "s", "key": "k"}}
    c = container(build({"env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": vf}]}))
    assert c["env"][-2:] == [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": vf}]
    assert c["env"][0]["name"] == "SHOAL_MODEL_CLASS"


def test_builders_are_deterministic() -> None:
    assert build({"replicas": 2}) == build({"replicas": 2})
