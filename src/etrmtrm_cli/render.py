"""Rich renderings of the library's return values. Only this module and cli.py print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from etrmtrm_cli.config import Experiment, ExperimentsFile, changed_keys
from etrmtrm_cli.encoders.registry import EncoderSpec, config_defaults


def experiments_table(file: ExperimentsFile, resolved: Mapping[str, Experiment], base: Experiment) -> Table:
    queue_of = {exp_id: name for name, members in file.queues.items() for exp_id in members}
    table = Table(title=f"{file.path} (profile {base.profile})", show_lines=False)
    table.add_column("ID", style="bold cyan")
    table.add_column("queue")
    table.add_column("model")
    table.add_column("differs from base")
    table.add_column("description", style="dim")
    for exp_id, exp in resolved.items():
        diff = changed_keys(exp, base)
        text = ", ".join(f"{key}={_short(new)}" for key, (_, new) in diff.items()) or "-"
        table.add_row(exp_id, queue_of.get(exp_id, ""), _model_name(exp), text, exp.description)
    return table


def _model_name(exp: Experiment) -> str:
    return "TRM (puzzle emb)" if exp.model == "trm" else exp.arch.recurrent_encoder_type


def encoders_table(specs: Sequence[EncoderSpec]) -> Table:
    table = Table(title="Registered encoders (arch.recurrent_encoder_type)")
    table.add_column("name", style="bold cyan")
    table.add_column("recurrent")
    table.add_column("settings (arch.encoder_params) = default")
    table.add_column("registered by", style="dim")
    for spec in specs:
        params = ", ".join(f"{k}={_short(v)}" for k, v in config_defaults(spec).items()) or "-"
        table.add_row(spec.name, "yes" if spec.recurrent else "no", params, spec.origin)
    return table


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
