"""Name -> encoder registry.

In-tree encoders register with the `register_encoder` decorator when `etrmtrm_cli.encoders` is imported;
installed packages add theirs through the entry-point group ``etrmtrm.encoders`` (the entry point names a
module or class whose import runs the decorator). Each encoder declares a frozen pydantic config for its
own keys (``arch.encoder_params`` in experiments.toml), validated when the experiments file is resolved.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from torch import nn

from etrmtrm_cli.encoders.base import DemoEncoder
from etrmtrm_cli.errors import ConfigKeyError, PluginError

ENTRY_POINT_GROUP = "etrmtrm.encoders"
# Frames of no use to a plugin's author: the import machinery's and ours (a module that is missing has no frame)
_IMPORT_MACHINERY = ("<frozen importlib", f"{Path(importlib.__file__).parent}{os.sep}",
                     f"{Path(__file__).parents[1]}{os.sep}")
M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    config_cls: type[BaseModel]
    module_cls: type[nn.Module]
    recurrent: bool
    origin: str  # where it was registered: "<module>:<class>", or "<module>:<class> (entry point <ep>)"
    package: str | None = None  # "<distribution> <version>" of the entry point that registered it


_ENCODERS: dict[str, EncoderSpec] = {}  # the one sanctioned piece of module state
_loading_entry_point: list[EntryPoint] = []  # set while an entry point is imported, so its origin says so
_entry_points_loaded = False


def register_encoder(name: str, config_cls: type[BaseModel], *, recurrent: bool) -> Callable[[M], M]:
    """Class decorator: ``@register_encoder("static", StaticConfig, recurrent=False)``."""

    def wrap(cls: M) -> M:
        origin, package = f"{cls.__module__}:{cls.__qualname__}", None
        if _loading_entry_point:
            ep = _loading_entry_point[-1]
            origin += f" (entry point {ep.name} = {ep.value})"
            package = f"{ep.dist.name} {ep.dist.version}" if ep.dist else None
        if name in _ENCODERS:
            raise PluginError(
                f"encoder name {name!r} is registered twice: by {_ENCODERS[name].origin} and by {origin}"
            )
        # compare and the logged metrics tell a recurrent run by the carry entry named by state_key
        if recurrent != (getattr(cls, "state_key", None) is not None):
            raise PluginError(
                f"encoder {name!r} ({origin}) is registered with recurrent={recurrent} but its class sets "
                + ("no state_key: name the carry entry whose norm and change are logged (state_key = '<key>')"
                   if recurrent else f"state_key = {cls.state_key!r}: a stateless encoder keeps it None")
            )
        # DemoEncoder's stateless defaults would give a recurrent encoder no carry, or one that never resets
        undefined = [m for m in ("initial_carry", "reset_carry")
                     if getattr(cls, m, None) in (None, getattr(DemoEncoder, m))]
        if recurrent and undefined:
            raise PluginError(f"encoder {name!r} ({origin}) is recurrent but does not define its own "
                              f"{' and '.join(undefined)} (base.reset_slots puts the reset slots back to their "
                              "initial state; see encoders/recurrent_standard.py)")
        settings = getattr(config_cls, "model_config", {}) if _is_model(config_cls) else {}
        if settings.get("frozen") is not True or settings.get("extra") != "forbid":
            raise PluginError(
                f"encoder {name!r} ({origin}): its config {getattr(config_cls, '__qualname__', config_cls)!r} must be "
                "a pydantic model that is frozen and refuses unknown keys (a typo in arch.encoder_params must fail, "
                "not be ignored): model_config = ConfigDict(frozen=True, extra='forbid')"
            )
        _ENCODERS[name] = EncoderSpec(name, config_cls, cls, recurrent, origin, package)
        return cls

    return wrap


def _is_model(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _ensure_loaded() -> None:
    """Import the in-tree encoders and, once, every installed entry point."""
    global _entry_points_loaded
    importlib.import_module("etrmtrm_cli.encoders")
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _loading_entry_point.append(ep)
        before = len(_ENCODERS)
        try:
            loaded = ep.load()
        except PluginError:
            raise
        except Exception as err:  # a broken third-party package must not hide which one it is
            where = next((f" ({f.filename}, line {f.lineno})" for f in reversed(traceback.extract_tb(err.__traceback__))
                          if not f.filename.startswith(_IMPORT_MACHINERY)), "")
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) of {ENTRY_POINT_GROUP} failed{where}: "
                              f"{type(err).__name__}: {err}") from err
        finally:
            _loading_entry_point.pop()
        # A class named by the entry point must be registered; a module must register one, now or when it was
        # imported before: else its decorator was forgotten
        classes = [spec.module_cls for spec in _ENCODERS.values()]
        if (loaded not in classes) if ep.attr else (len(_ENCODERS) == before and not any(
                cls.__module__ == ep.module or cls.__module__.startswith(f"{ep.module}.") for cls in classes)):
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) of {ENTRY_POINT_GROUP} registered no encoder: "
                              "decorate its class with @register_encoder(name, Config, recurrent=...)")


def list_encoders() -> list[EncoderSpec]:
    _ensure_loaded()
    return [_ENCODERS[name] for name in sorted(_ENCODERS)]


def get_encoder(name: str) -> EncoderSpec:
    _ensure_loaded()
    if name not in _ENCODERS:
        hint = difflib.get_close_matches(name, list(_ENCODERS), n=1)
        raise ConfigKeyError(
            "arch.recurrent_encoder_type",
            f"unknown encoder {name!r}{f'; did you mean {hint[0]!r}?' if hint else ''} (valid: "
            f"{', '.join(sorted(_ENCODERS))}; a new encoder registers when its module is imported: in-tree from "
            f"encoders/__init__.py, from a package by an entry point in {ENTRY_POINT_GROUP})",
        )
    return _ENCODERS[name]


def provenance(name: str) -> dict[str, str | None]:
    """For meta.json: the encoder's name, the class that registered it and the installed package it came from
    ("<distribution> <version>"; None for a module that no installed distribution names), so a run of a plugin
    says which version of it ran."""
    spec = get_encoder(name)
    return {"name": name, "origin": spec.origin, "package": spec.package or _installed_package(spec.module_cls)}


def _installed_package(cls: type) -> str | None:
    """"<distribution> <version>" of the installed distribution that names `cls`'s top-level module, if any."""
    for dist in dict.fromkeys(packages_distributions().get(cls.__module__.partition(".")[0], [])):
        try:
            return f"{dist} {version(dist)}"
        except (PackageNotFoundError, ValueError):  # metadata without a usable name or version
            continue
    return None


def validate_encoder_params(name: str, params: Mapping[str, Any]) -> BaseModel:
    spec = get_encoder(name)
    try:
        return spec.config_cls.model_validate(dict(params))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        fields = list(spec.config_cls.model_fields)
        hint = difflib.get_close_matches(key, fields, n=1) if first["type"] == "extra_forbidden" else []
        raise ConfigKeyError(
            f"arch.encoder_params.{key}",
            f"{first['msg']}{f'; did you mean {hint[0]!r}?' if hint else ''} "
            f"(encoder {name!r} takes: {', '.join(fields) or 'none'})",
        ) from None


def config_defaults(spec: EncoderSpec) -> dict[str, Any]:
    """The encoder's own settings with their defaults, for `etrmtrm encoders` ("required" where it has none)."""
    return {k: "required" if f.is_required() else f.get_default(call_default_factory=True)
            for k, f in spec.config_cls.model_fields.items()}


def build_encoder(arch: Any, seq_len: int) -> nn.Module:
    """The context provider named by ``arch.recurrent_encoder_type`` (ArchConfig), for a canvas of seq_len."""
    spec = get_encoder(arch.recurrent_encoder_type)
    params = validate_encoder_params(spec.name, arch.encoder_params)
    try:  # checked before the call, so a TypeError raised inside a constructor keeps its traceback
        inspect.signature(spec.module_cls).bind(arch, params, seq_len)
    except TypeError as err:
        raise PluginError(
            f"encoder {spec.name!r} ({spec.origin}): its constructor must take (arch, params, seq_len): {err}"
        ) from None
    return spec.module_cls(arch, params, seq_len)
