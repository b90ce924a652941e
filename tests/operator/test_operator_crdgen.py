"""The generated CRD: checked-in copies are current, and the schema is structural."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from shoal.operator import crdgen


def test_checked_in_crds_are_current() -> None:
    # Fails when spec.py changed without `python -m shoal.operator.crdgen`.
    files = crdgen.rendered()
    assert set(crdgen.OUTPUTS) <= set(files)
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run python -m shoal.operator.crdgen"
    assert crdgen.main(["--check"]) == 0


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _version() -> dict[str, Any]:
    doc = yaml.safe_load(crdgen.render())
    (version,) = doc["spec"]["versions"]
    return dict(version)


def test_schema_is_structural_and_documented() -> None:
    schema = _version()["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        # Structural: every node has a type (or is int-or-string); no $ref, no bare anyOf.
        assert "$ref" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
        assert "additionalProperties" not in node or "properties" not in node, path
        if not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description (kubectl explain)"
    for path, node in _walk(schema["properties"]["status"], "status"):
        assert "type" in node, path


def test_free_form_only_where_intended() -> None:
    schema = _version()["schema"]["openAPIV3Schema"]
    free = [
        path
        for path, node in _walk(schema["properties"]["spec"], "spec")
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    # affinity and env valueFrom are typed (an operator `Bogus` is refused at apply).
    assert sorted(free) == ["spec.model.config"]


def test_subresources_columns_and_rules() -> None:
    v = _version()
    assert v["subresources"]["status"] == {}
    assert v["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in v["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Ready", "Reason", "Replicas", "Desired", "Queue", "URL", "Age"]
    spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["properties"]["autoscaling"]["x-kubernetes-validations"]]
    assert any("minReplicas" in r and "maxReplicas" in r for r in rules)
    mb = spec["properties"]["batching"]["properties"]["maxBatchSize"]
    assert (mb["minimum"], mb["maximum"]) == (1, 4096)
    target = spec["properties"]["autoscaling"]["properties"]["targetQueueDepth"]
    assert target["exclusiveMinimum"] is True
    assert target["minimum"] == 0
