"""Finding and constructing user models: `module:Class`, `path/to/file.py:Class`, config kwargs,
a model URI (local path, file://, MLflow models:/ and runs:/), and the torch device."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from shoal.runtime.execution import remember_torch_threads

logger = logging.getLogger(__name__)

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
MLFLOW_TARGET = "shoal.runtime.mlflow_model:MlflowPyfunc"
DEFAULT_MODEL_TARGET = "shoal.runtime.default_model:DefaultMLP"


class LoadError(Exception):
    """A model could not be found or constructed; the process exits non-zero with this."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: what to import, under which name, with which kwargs."""

    name: str
    target: str
    config: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None


def parse_config_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists, objects), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_config_pairs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LoadError(f"--config expects key=value, got {pair!r}")
        out[key.strip()] = parse_config_value(value)
    return out


def parse_config_json(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LoadError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise LoadError(f"{source} must be a JSON object, got {type(value).__name__}")
    return value


def registry_name(uri: str | None) -> str | None:
    """`models:/iris@champion` or `models:/iris/2` -> `iris`; None for other URIs."""
    if not uri or not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :].lstrip("/")
    return rest.split("@", 1)[0].split("/", 1)[0] or None


def default_name(target: str, uri: str | None = None) -> str:
    """`examples.adder:Adder` -> `adder`; `IrisClassifier` -> `iris-classifier`; the MLflow
    pyfunc served from `models:/iris@champion` -> `iris` (else `model`)."""
    if target == MLFLOW_TARGET:
        return registry_name(uri) or "model"
    attr = target.rpartition(":")[2].rpartition(".")[2] or Path(target).stem
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", attr).lower().replace("_", "-")


def split_named(spec: str) -> tuple[str | None, str]:
    """`name=target` or `target`."""
    name, sep, target = spec.partition("=")
    if sep and name and ":" not in name and "/" not in name:
        return name, target
    return None, spec


def is_mlflow_uri(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(MLFLOW_SCHEMES)  # type: ignore[union-attr]


def resolve_uri(uri: str) -> str:
    """What the class receives as `uri=`: file:// becomes a local path (checked to exist);
    MLflow and other URIs pass through unchanged for the class to open."""
    if uri.startswith("file://"):
        path = unquote(urlparse(uri).path)
    elif "://" in uri or is_mlflow_uri(uri):
        return uri
    else:
        path = uri
    if not os.path.exists(path):
        raise LoadError(f"model URI {uri!r}: {path} does not exist")
    return os.path.abspath(path)


def import_target(target: str, app_dir: str | None = None) -> Any:
    """Import `module:attr` or `path/to/file.py:attr` (attr may be dotted)."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise LoadError(f"model {target!r}: expected module:Class or path/to/file.py:Class")
    base = app_dir or os.getcwd()
    if base not in sys.path:
        sys.path.insert(0, base)  # like uvicorn: `shoal serve examples.adder:Adder` from the root
    try:
        if module_part.endswith(".py") or "/" in module_part:
            path = Path(module_part)
            if not path.is_absolute():
                path = Path(base) / path
            if not path.is_file():
                raise LoadError(f"model {target!r}: file {path} not found")
            mod_name = f"shoal_user_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module  # so pickling and dataclasses can find it
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(
            f"model {target!r}: importing {module_part} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError(f"model {target!r}: {module_part} has no attribute {attr!r}") from None
    return obj


def _gpu_visible() -> bool:
    """A cheap look for an NVIDIA device, so a CPU pod never pays for importing torch."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def _torch() -> Any:
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch
    try:
        import torch
    except ImportError:
        return None
    return torch


def resolve_device(setting: str) -> str:
    """`auto` -> `cuda` when a GPU is visible and torch sees it, else `cpu`. An explicit
    `cuda[:N]` is checked, so a pod without the GPU it was promised fails its load loudly.
    Resolved before the model is built: torch may not be imported yet (models often import it
    in `__init__`), so it is imported here when a GPU is there to be found."""
    if setting in ("", "auto"):
        torch = sys.modules.get("torch")
        if torch is None and _gpu_visible():
            torch = _torch()
        if torch is not None and torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if setting.startswith("cuda"):
        torch = _torch()
        if torch is None:
            logger.warning("--device %s: torch is not installed, the GPU is not checked", setting)
        elif not torch.cuda.is_available():
            raise LoadError(f"--device {setting}: no CUDA device is available")
    return setting


def _accepts(func: Any, name: str) -> bool:
    if func is object.__init__:  # its (*args, **kwargs) accepts nothing
        return False
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def instantiate(
    spec: ModelSpec, device_setting: str, app_dir: str | None = None
) -> tuple[Any, str]:
    """Import and construct one model. Returns (object, device)."""
    target = import_target(spec.target, app_dir)
    device = resolve_device(device_setting)
    if not isinstance(target, type):
        if spec.config or spec.uri:
            raise LoadError(
                f"model {spec.name!r}: {spec.target} is a function; config and uri need a class"
            )
        return target, device
    kwargs = dict(spec.config)
    init = target.__init__  # type: ignore[misc]
    if spec.uri is not None:
        if not _accepts(init, "uri"):
            raise LoadError(
                f"model {spec.name!r}: a model URI was given but {target.__name__}.__init__ "
                f"takes no `uri` argument"
            )
        kwargs["uri"] = resolve_uri(spec.uri)
    if "device" not in kwargs and _accepts(init, "device"):
        kwargs["device"] = device
    try:
        instance = target(**kwargs)
    except LoadError:
        raise  # the class said what is wrong (e.g. the MLflow store it was pointed at)
    except TypeError as exc:
        raise LoadError(
            f"model {spec.name!r}: {target.__name__}({_kw(kwargs)}) failed: {exc}"
        ) from exc
    except Exception as exc:
        raise LoadError(
            f"model {spec.name!r}: {target.__name__}.__init__ raised {type(exc).__name__}: {exc}"
        ) from exc
    place_on_device(instance, device)
    remember_torch_threads()
    return instance, device


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def place_on_device(instance: object, device: str) -> None:
    """Move torch modules held by the model to `device` and put them in eval mode: the model
    itself, its attributes, and modules inside dict/list/tuple/set attributes (nested), so a
    `self.heads = {"a": Linear(...)}` does not keep dropout on."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    for module in _modules(instance, torch.nn.Module):
        module.to(device)
        module.eval()


def _modules(instance: object, module_type: type) -> list[Any]:
    found: list[Any] = []
    seen: set[int] = set()
    todo: list[object] = [instance, *getattr(instance, "__dict__", {}).values()]
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, module_type):
            found.append(value)  # its own submodules follow it in .to() and .eval()
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            todo.extend(value)
    return found
