"""`shoal.batch_predict`: read -> map_batches(actor pool of the model) -> a Ray Dataset."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.offline.predictor import Predictor, PredictorOptions
from shoal.runtime.loading import ModelSpec, default_name, import_target

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

READERS = {
    ".csv": "read_csv",
    ".parquet": "read_parquet",
    ".jsonl": "read_json",
    ".json": "read_json",
}


class InputError(ValueError):
    """The input dataset cannot be read as asked."""


@dataclass(frozen=True)
class BatchPredictConfig:
    """One offline run. Each field mirrors a `shoal batch-predict` flag."""

    target: str
    """`module:Class`, `path/to/file.py:Class`, or a function decorated with `@shoal.batch`."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the class, as `--config key=value`."""
    model_uri: str | None = None
    """Passed to the class as `uri=` (local path, file://, MLflow models:/ or runs:/)."""
    batch_size: int = 128
    min_actors: int = 1
    max_actors: int = 1
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    options: PredictorOptions = field(default_factory=PredictorOptions)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ValueError(
                f"need 1 <= min actors <= max actors, got {self.min_actors}..{self.max_actors}"
            )
        if self.num_gpus_per_actor < 0:
            raise ValueError(f"GPUs per actor must be >= 0, got {self.num_gpus_per_actor}")


def input_format(path: str | os.PathLike[str]) -> str:
    """The suffix of the reader for `path` (a file, or a folder of files of one kind), or an
    InputError that says what is wrong. Cheap: the CLI calls it before Ray starts."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    suffix = p.suffix.lower()
    if p.is_dir():
        kinds = {f.suffix.lower() for f in p.iterdir() if f.suffix.lower() in READERS}
        if len(kinds) != 1:
            raise InputError(f"input folder {p} must hold files of one kind of {sorted(READERS)}")
        suffix = kinds.pop()
    if suffix not in READERS:
        raise InputError(f"input {p}: unknown format {suffix!r}; use one of {sorted(READERS)}")
    return suffix


def read_dataset(path: str | os.PathLike[str]) -> ray.data.Dataset:
    """A Ray Dataset over a csv, parquet or json-lines file (or a folder of them)."""
    import ray.data

    suffix = input_format(path)
    kwargs: dict[str, Any] = {"lines": True} if suffix == ".jsonl" else {}
    if suffix == ".jsonl":
        kwargs["file_extensions"] = ["jsonl"]
    ds: ray.data.Dataset = getattr(ray.data, READERS[suffix])(str(path), **kwargs)
    return ds


def check_target(target: str) -> None:
    """Fail in the driver, with the loader's message, before any actor starts."""
    import_target(target)


def batch_predict(
    source: str | os.PathLike[str] | ray.data.Dataset, config: BatchPredictConfig
) -> ray.data.Dataset:
    """The model's predictions over `source`, lazily: the input columns plus a prediction
    column and an error column (None where the row succeeded)."""
    import ray.data

    check_target(config.target)
    ds = source if isinstance(source, ray.data.Dataset) else read_dataset(source)
    spec = ModelSpec(
        name=default_name(config.target),
        target=config.target,
        config=dict(config.config),
        uri=config.model_uri,
    )
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"spec": spec, "options": config.options},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
        num_gpus=config.num_gpus_per_actor or None,
        num_cpus=config.num_cpus_per_actor,
    )
