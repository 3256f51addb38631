"""`etrmtrm compare`: read the runs, build the matrix, the config differences, the trivial baselines and the
verdict. Everything here reads only the runs' files (rundir); nothing prints. --per-puzzle (per_task.py)
is the one part that runs models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etrmtrm_cli import rundir
from etrmtrm_cli.analysis.baselines import TrivialBaselines, trivial_baselines
from etrmtrm_cli.analysis.configs import Configuration, group_configurations
from etrmtrm_cli.analysis.matrix import FROM_SCRATCH, NOT_RECORDED, RunRow, config_differences, run_row
from etrmtrm_cli.analysis.per_task import TaskScore
from etrmtrm_cli.analysis.verdict import Verdict, verdict
from etrmtrm_cli.errors import ConfigError, RunError
from etrmtrm_cli.experiments_file import ExperimentsFile
from etrmtrm_cli.rundir import RunFiles


@dataclass(frozen=True)
class Origin:
    """The compared runs that started from one decoder (the sha256 of its weights) on one kind of CPU."""

    decoder: str
    cpu: str
    runs: tuple[str, ...]  # run labels ("E0b s2")


def origins(rows: Sequence[RunRow]) -> list[Origin]:
    """The runs grouped by (decoder, CPU), in the order their first run was named."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row.decoder, row.cpu), []).append(row.label)
    return [Origin(decoder, cpu, tuple(labels)) for (decoder, cpu), labels in groups.items()]


def loaded_decoders(found: Sequence[Origin]) -> list[str]:
    """The distinct recorded decoders the runs loaded: more than one means arms may differ by their decoder too."""
    return list(dict.fromkeys(o.decoder for o in found if o.decoder not in (FROM_SCRATCH, NOT_RECORDED)))


def loading_cpus(found: Sequence[Origin]) -> list[str]:
    """The distinct CPUs of the runs that loaded a decoder (the arms; a pretraining run is their origin)."""
    return list(dict.fromkeys(o.cpu for o in found if o.decoder != FROM_SCRATCH))


@dataclass(frozen=True)
class Comparison:
    runs: list[RunFiles]
    rows: list[RunRow]  # one per run (each seed)
    configs: list[Configuration]  # the runs grouped by config hash, figures over seeds
    config_diff: dict[str, list[Any]]  # key -> each configuration's value
    baselines: list[TrivialBaselines]
    verdict: Verdict
    origins: list[Origin]
    runs_dir: Path = Path("runs")
    per_task: list[TaskScore] = field(default_factory=list)
    stand_ins: dict[str, str] = field(default_factory=dict)  # named experiment without runs -> whose runs stand in

    def counted_runs(self, exp_id: str) -> list[RunFiles]:
        """exp_id's finished runs, one per seed (the first where a seed ran twice): what its figures are over."""
        exp_id = self.stand_ins.get(exp_id, exp_id)
        seeds: set[int] = set()
        out = []
        for run, row in zip(self.runs, self.rows, strict=True):
            if run.exp_id == exp_id and row.status == "finished" and row.seed not in seeds:
                seeds.add(row.seed)
                out.append(run)
        return out


def _row(run: RunFiles) -> RunRow:
    """The run's row; a config.json or meta.json whose values are not of the kinds etrmtrm writes (edited or
    damaged: a seed "x", an arch that is a number) is named, not a traceback."""
    try:
        return run_row(run)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise RunError(f"{run.run_dir}: its {rundir.CONFIG} or {rundir.META} holds a value of the wrong kind "
                       f"({type(err).__name__}: {err}); the run's files were edited or damaged") from None


def stand_ins(file: ExperimentsFile, runs_dir: Path, exp_ids: Sequence[str]) -> dict[str, str]:
    """Named experiments without a run folder whose configuration, at the profile another experiment's runs trained
    at, is that experiment's -> that experiment (E2b -> E0b where a queue with both trained E0b alone,
    `experiments_file.split_repeats`; or the other way round)."""
    out = {}
    for exp_id in exp_ids:
        if exp_id not in file.experiments or (runs_dir / exp_id).exists():
            continue
        for other in file.experiments:
            profiles = {_profile(run) for run in rundir.seed_runs(runs_dir, other)}
            if other != exp_id and any(file.same_configuration(exp_id, other, p) for p in profiles
                                       if p in file.profiles):
                out[exp_id] = other
                break
    return out


def _profile(run: Path) -> str | None:
    """The profile a run trained at; None where its config.json cannot be read (named where the run is read)."""
    try:
        return rundir.read_json(run / rundir.CONFIG).get("profile")
    except RunError:
        return None


def compare_runs(runs_dir: Path, exp_ids: Sequence[str], *, with_baselines: bool = True,
                 stand_ins: Mapping[str, str] | None = None) -> Comparison:
    """The comparison of these experiments' runs; `stand_ins` (from `stand_ins`) reads another experiment's runs for
    a named one without its own."""
    stand_ins = dict(stand_ins or {})
    runs = rundir.load_runs(runs_dir, list(dict.fromkeys(stand_ins.get(e, e) for e in exp_ids)))
    profiles = {str(r.config.get("profile")) for r in runs}
    if len(profiles) > 1:
        each = ", ".join(f"{r.exp_id}: {r.config.get('profile')}" for r in runs)
        raise ConfigError(f"the runs were trained at different profiles ({each}): their sizes differ, so their "
                          "figures are not comparable; compare runs of one profile")
    rows = [_row(r) for r in runs]
    configs = group_configurations(rows, stand_ins)
    firsts = [next(run for run, row in zip(runs, rows, strict=True) if row is c.first) for c in configs]
    differences = config_differences(firsts)
    return Comparison(runs, rows, configs, differences, trivial_baselines(runs) if with_baselines else [],
                      verdict(rows, configs, differences), origins(rows), runs_dir, stand_ins=stand_ins)
