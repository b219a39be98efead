"""Typed configs loaded from `params.yaml` sections (one file, one section per stage).

Each stage defines its pydantic model next to its code (e.g. `PhantomConfig` in data/phantom.py);
this module only loads a section and validates it, so unknown or mistyped keys fail loudly instead of
being silently ignored (the reference systems' `drop_conditionning` typo is exactly that failure).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from echo_core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for stage configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}", fix="run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_section(model: type[M], section: str, path: str | os.PathLike = "params.yaml",
                 overrides: dict[str, Any] | None = None) -> M:
    """Validate `params.yaml[section]` (a dotted path like 'train.lvdm') merged with `overrides`."""
    data: Any = load_params(path)
    for key in section.split("."):
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{path} has no section '{section}'", fix=f"add a '{section}:' section")
        data = data[key]
    return validate_config(model, {**(data or {}), **(overrides or {})}, where=f"{path}:{section}")


def validate_config(model: type[M], data: dict[str, Any], where: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid {where}: {problems}") from None
