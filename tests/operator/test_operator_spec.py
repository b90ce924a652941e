"""The pydantic API: valid manifests parse, the invalid table is refused, defaults are right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import TABLE, build_case
from pydantic import ValidationError

from shoal.operator import spec as api

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


SCHEMA_CASES = [c for c in TABLE["cases"] if c["rejected_by"] == "schema"]


def test_table_has_at_least_twenty_schema_cases() -> None:
    assert len(SCHEMA_CASES) >= 20
    assert len({c["id"] for c in TABLE["cases"]}) == len(TABLE["cases"])


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c["id"] for c in SCHEMA_CASES])
def test_invalid_manifest_refused_by_pydantic(case: dict[str, Any]) -> None:
    manifest = build_case(case)

    def parse() -> None:
        api.parse_spec(manifest["spec"])
        api.validate_name(manifest["metadata"]["name"])

    with pytest.raises((ValidationError, ValueError)):
        parse()


OPERATOR_CASES = [c for c in TABLE["cases"] if c["rejected_by"] == "operator"]


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[c["id"] for c in OPERATOR_CASES])
def test_operator_cases_pass_the_schema(case: dict[str, Any]) -> None:
    # These are the ones only the operator (or the cluster) can catch.
    api.parse_spec(build_case(case)["spec"])


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_parse(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["kind"] == api.KIND
        api.validate_name(doc["metadata"]["name"])
        api.parse_spec(doc["spec"])


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


def test_defaults_and_aliases() -> None:
    s = api.parse_spec({"model": {"class": "examples.adder:Adder"}})
    assert s.model.class_ == "examples.adder:Adder"
    assert s.model.uri is None
    assert s.model.config == {}
    assert (s.batching.max_batch_size, s.batching.batch_wait_timeout_ms) == (32, 5.0)
    assert (s.rollout.max_surge, s.rollout.max_unavailable) == (1, 0)
    assert s.resources.gpu == 0
    assert s.autoscaling is None
    dumped = s.model_dump(by_alias=True)
    assert "class" in dumped["model"]
    assert "maxBatchSize" in dumped["batching"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, 1),
        ({"replicas": 3}, 3),
        ({"replicas": 0}, 0),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2),
        ({"autoscaling": {"minReplicas": 0}}, 0),
        ({"replicas": 4, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 4),
    ],
)
def test_desired_replicas(raw: dict[str, Any], expected: int) -> None:
    s = api.parse_spec({"model": {"class": "a:B"}, **raw})
    assert s.desired_replicas() == expected


@pytest.mark.parametrize(
    "uri",
    [
        "file:///models/iris",
        "/models/iris",
        "pvc://models/iris/v1",
        "pvc://models",
        "models:/iris/3",
        "models:/iris@champion",
        "runs:/0123abc/model",
    ],
)
def test_uri_forms_accepted(uri: str) -> None:
    assert api.parse_spec({"model": {"class": "a:B", "uri": uri}}).model.uri == uri


@pytest.mark.parametrize("value", ["2", "500m", "1.5", "4Gi", "128974848", "129e6", 2])
def test_quantities_accepted(value: object) -> None:
    api.parse_spec({"model": {"class": "a:B"}, "resources": {"cpu": value, "memory": value}})
