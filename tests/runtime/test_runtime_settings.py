"""`shoal serve` settings from flags and env (flags win), model specs, config parsing, URIs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shoal.runtime.loading import (
    MLFLOW_TARGET,
    LoadError,
    ModelSpec,
    default_name,
    instantiate,
    parse_config_value,
    resolve_uri,
)
from shoal.runtime.settings import add_arguments, from_args

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), env or {})


def test_defaults() -> None:
    s = parse(["examples.adder:Adder"])
    assert (s.host, s.port, s.device) == ("0.0.0.0", 8000, "auto")
    assert s.models == [ModelSpec(name="adder", target="examples.adder:Adder")]
    assert s.batch_overrides() == {
        "max_batch_size": None,
        "batch_wait_timeout_s": None,
        "batch_wait_mode": None,
        "max_concurrent_batches": None,
        "max_queue_size": None,
    }


def test_env_only_as_the_operator_starts_pods() -> None:
    env = {
        "SHOAL_MODEL_CLASS": "examples.iris:LogisticIris",
        "SHOAL_MODEL_NAME": "iris",
        "SHOAL_MODEL_URI": "/models/iris",
        "SHOAL_MODEL_CONFIG": '{"C": 0.5}',
        "SHOAL_HOST": "10.1.2.3",
        "SHOAL_PORT": "9000",
        "SHOAL_DEVICE": "cpu",
        "SHOAL_MAX_BATCH_SIZE": "64",
        "SHOAL_BATCH_WAIT_TIMEOUT_S": "0.002",
        "SHOAL_BATCH_WAIT_MODE": "adaptive",
        "SHOAL_MAX_QUEUE_SIZE": "100",
        "SHOAL_REQUEST_TIMEOUT_S": "5",
        "SHOAL_GRACE_PERIOD_S": "12",
        "SHOAL_LOG_FORMAT": "json",
    }
    s = parse([], env)
    assert s.models == [ModelSpec("iris", "examples.iris:LogisticIris", {"C": 0.5}, "/models/iris")]
    assert (s.host, s.port, s.device, s.log_format) == ("10.1.2.3", 9000, "cpu", "json")
    assert s.batch_overrides() == {
        "max_batch_size": 64,
        "batch_wait_timeout_s": 0.002,
        "batch_wait_mode": "adaptive",
        "max_concurrent_batches": None,
        "max_queue_size": 100,
    }
    assert (s.request_timeout_s, s.grace_period_s) == (5.0, 12.0)


def test_flags_win_over_env() -> None:
    env = {"SHOAL_PORT": "9000", "SHOAL_MAX_BATCH_SIZE": "64", "SHOAL_MODEL_CLASS": "a:B"}
    s = parse(["x.y:Z", "--port", "7000", "--max-batch-size", "8"], env)
    assert s.port == 7000
    assert s.batch_overrides()["max_batch_size"] == 8
    assert s.models[0].target == "x.y:Z"


def test_config_pairs_parse_json_values_and_override_config_json() -> None:
    s = parse(
        [
            "m:C",
            "--config-json",
            '{"a": 1, "b": "x"}',
            "--config",
            "b=2",
            "--config",
            "c=[1, 2]",
            "--config",
            "d=hello",
            "--config",
            "e=true",
        ]
    )
    assert s.models[0].config == {"a": 1, "b": 2, "c": [1, 2], "d": "hello", "e": True}
    assert parse_config_value("0.5") == 0.5
    assert parse_config_value("models:/x") == "models:/x"


def test_several_named_models_with_targeted_config() -> None:
    s = parse(["a=m:A", "b=path/to/file.py:B", "--config", "a.k=1", "--config", "b.k=2"])
    assert [(m.name, m.target, m.config) for m in s.models] == [
        ("a", "m:A", {"k": 1}),
        ("b", "path/to/file.py:B", {"k": 2}),
    ]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "no model given"),
        (["a=m:A", "a=m:B"], {}, "two models are named 'a'"),
        (["a=m:A", "b=m:B", "--model-uri", "/x"], {}, "needs a single model"),
        (["a=m:A", "b=m:B", "--config", "k=1"], {}, "must be model.key"),
        (["m:A", "--config", "novalue"], {}, "key=value"),
        (["m:A"], {"SHOAL_MODEL_CONFIG": "[1]"}, "must be a JSON object"),
        (["m:A"], {"SHOAL_PORT": "http"}, "SHOAL_PORT='http' is not a valid int"),
        (["m:A", "--max-header-bytes", "0"], {}, "--max-header-bytes must be a positive"),
        (["m:A"], {"SHOAL_HEAD_TIMEOUT_S": "-1"}, "--head-timeout-s must be a positive"),
        (["m:A"], {"SHOAL_BODY_TIMEOUT_S": "inf"}, "--body-timeout-s must be a positive"),
        (["m:A"], {"SHOAL_MAX_CONNECTIONS": "0"}, "--max-connections must be a positive"),
        (["m:A", "--metrics-port", "8000"], {}, "--metrics-port 8000 must differ from --port"),
        (["m:A", "--port", "9"], {"SHOAL_METRICS_PORT": "9"}, "must differ from --port"),
        (["m:A", "--metrics-port", "70000"], {}, "--metrics-port must be a TCP port"),
        (["m:A", "--port", "-1"], {}, "--port must be a TCP port"),
    ],
)
def test_usage_errors_say_what_is_wrong(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(LoadError, match=message):
        parse(argv, env)


def test_bare_mlflow_uri_serves_the_pyfunc() -> None:
    s = parse(["--model-uri", "models:/iris@champion"])
    assert s.models == [ModelSpec("iris", MLFLOW_TARGET, {}, "models:/iris@champion")]


def test_default_names() -> None:
    assert default_name("examples.adder:Adder") == "adder"
    assert default_name("examples.iris:LogisticIris") == "logistic-iris"
    assert default_name("path/to/my_model.py:Big_Model") == "big-model"


def test_uri_resolution(tmp_path: Path) -> None:
    assert resolve_uri(tmp_path.as_uri()) == str(tmp_path)
    assert resolve_uri(str(tmp_path)) == str(tmp_path)
    assert resolve_uri("models:/iris/1") == "models:/iris/1"
    assert resolve_uri("s3://bucket/model") == "s3://bucket/model"
    with pytest.raises(LoadError, match="does not exist"):
        resolve_uri((tmp_path / "missing").as_uri())


def test_file_path_target_uri_kwarg_and_device(tmp_path: Path) -> None:
    src = tmp_path / "my_model.py"
    src.write_text(
        "class WithUri:\n"
        "    def __init__(self, uri, device, scale=1):\n"
        "        self.uri, self.device, self.scale = uri, device, scale\n"
        "    def __call__(self, row):\n"
        "        return row\n"
        "class NoUri:\n"
        "    def __call__(self, row):\n"
        "        return row\n"
    )
    spec = ModelSpec("m", f"{src}:WithUri", {"scale": 3}, tmp_path.as_uri())
    obj, device = instantiate(spec, "auto")
    assert (obj.uri, obj.device, obj.scale, device) == (str(tmp_path), "cpu", 3, "cpu")
    with pytest.raises(LoadError, match="takes no `uri` argument"):
        instantiate(ModelSpec("m", f"{src}:NoUri", {}, str(tmp_path)), "cpu")
    with pytest.raises(LoadError, match=r"NoUri\(x=1\) failed"):
        instantiate(ModelSpec("m", f"{src}:NoUri", {"x": 1}), "cpu")
    with pytest.raises(LoadError, match="has no attribute 'Missing'"):
        instantiate(ModelSpec("m", f"{src}:Missing"), "cpu")
    with pytest.raises(LoadError, match="not found"):
        instantiate(ModelSpec("m", f"{tmp_path}/nope.py:X"), "cpu")


def test_limits_have_safe_defaults_and_env_names() -> None:
    s = parse(["m:A"])
    assert (s.max_header_bytes, s.max_header_count) == (32 << 10, 100)
    assert (s.head_timeout_s, s.body_timeout_s, s.keep_alive_timeout_s) == (10.0, 60.0, 75.0)
    assert (s.max_connections, s.max_timeout_ms) == (4096, 600_000)
    env = {
        "SHOAL_MAX_HEADER_BYTES": "1024",
        "SHOAL_MAX_HEADER_COUNT": "10",
        "SHOAL_HEAD_TIMEOUT_S": "1.5",
        "SHOAL_BODY_TIMEOUT_S": "2.5",
        "SHOAL_KEEP_ALIVE_TIMEOUT_S": "3",
        "SHOAL_MAX_CONNECTIONS": "7",
        "SHOAL_MAX_TIMEOUT_MS": "1000",
    }
    s = parse(["m:A"], env)
    assert (s.max_header_bytes, s.max_header_count, s.max_connections) == (1024, 10, 7)
    assert (s.head_timeout_s, s.body_timeout_s, s.keep_alive_timeout_s) == (1.5, 2.5, 3.0)
    assert s.max_timeout_ms == 1000


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, None),  # a laptop: never /dev/termination-log
        ([], {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "/dev/termination-log"),  # in a pod
        ([], {"SHOAL_TERMINATION_LOG": "/tmp/t"}, "/tmp/t"),  # asked for
        (["--termination-log", "/tmp/f"], {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "/tmp/f"),
    ],
)
def test_the_termination_log_is_written_only_in_a_pod_or_when_asked(
    argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    assert parse(["m:A", *argv], env).termination_log == expected
