"""Configurations: the compared runs grouped by what they train, whatever their experiment ID.

Runs whose resolved configs are identical apart from id, description and seed (one `config_hash`) are
seeds of one configuration: E2b, E3a and E4b are E0b's in the plan, and a seed that two of them ran is
counted once (the others repeat it bit for bit and are no further evidence). Every figure of a
configuration is an `Estimate` over its seeds: mean, 95 % t interval and n.

Only finished runs are seeds. A run in progress, interrupted or failed stops short of its planned steps, so
its "final" figures are not final: it is listed as pending and enters no mean, interval or decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from etrmtrm_cli.analysis.matrix import CONVERGENCE_LEVELS, RunRow
from etrmtrm_cli.analysis.stats import Estimate, estimate


@dataclass(frozen=True)
class Configuration:
    label: str  # "E0b", or "E0b = E2b" when several experiments share the configuration
    exp_ids: tuple[str, ...]
    config_hash: str
    seeds: dict[int, RunRow]  # seed -> the finished run counted for it
    repeats: tuple[str, ...]  # runs that repeat a seed already counted ("E2b s0"), left out
    pending: tuple[RunRow, ...] = ()  # unfinished runs of seeds not counted, left out until they finish

    @property
    def first(self) -> RunRow:
        """A run of this configuration (the first counted, else the first pending): its settings."""
        return next(iter(self.seeds.values())) if self.seeds else self.pending[0]

    @property
    def parent(self) -> str | None:
        """The experiment this configuration is judged against: a parent of one of its runs that is not itself
        (E0b = E2b: E2b's parent is E0b, the configuration itself, and E0b's is E0a)."""
        runs = (*self.seeds.values(), *self.pending)
        return next((r.parent for r in runs if r.parent and r.parent not in self.exp_ids), None)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def per_seed(self, figure: str) -> dict[int, float | None]:
        """seed -> that seed's value of a RunRow figure (steps_to_90 / _80 name steps_to[level])."""
        return {seed: _figure(row, figure) for seed, row in self.seeds.items()}

    def estimate(self, figure: str) -> Estimate:
        return estimate(list(self.per_seed(figure).values()))


def _figure(row: RunRow, figure: str) -> float | None:
    if figure.startswith("steps_to_"):
        level = int(figure.removeprefix("steps_to_")) / 100
        assert level in CONVERGENCE_LEVELS, figure
        value = row.steps_to[level]
        return None if value is None else float(value)
    value = getattr(row, figure)
    return None if value is None else float(value)


def group_configurations(rows: Sequence[RunRow], stand_ins: Mapping[str, str] | None = None) -> list[Configuration]:
    """Configurations in the order their first run was named; within one, seeds in ascending order. `stand_ins`:
    experiments without runs of their own whose configuration is that of an experiment here (E2b -> E0b): named
    with it ("E0b = E2b")."""
    by_hash: dict[str, list[RunRow]] = {}
    for row in rows:
        by_hash.setdefault(row.config_hash, []).append(row)
    out = []
    for config_hash, members in by_hash.items():
        seeds: dict[int, RunRow] = {}
        repeats = []
        for row in sorted(members, key=lambda r: not r.finished):  # a finished run of a seed is the one counted
            if row.seed in seeds:
                repeats.append(row.label if row.seed_axis else f"{row.exp_id} s{row.seed}")
            elif row.finished:
                seeds[row.seed] = row
        pending = tuple(r for r in members if not r.finished and r.seed not in seeds)
        ids = tuple(dict.fromkeys(r.exp_id for r in members))
        ids += tuple(name for name, original in (stand_ins or {}).items() if original in ids and name not in ids)
        out.append(Configuration(" = ".join(ids), ids, config_hash, dict(sorted(seeds.items())), tuple(repeats),
                                 pending))
    return _numbered(out)


def _numbered(configs: list[Configuration]) -> list[Configuration]:
    """Configurations that would share a label (runs of one experiment under two configurations: a `--set` run, or
    seeds that ran in two dtypes) numbered in order, "E0a #1" and "E0a #2": the config differences tell them apart."""
    labels = [c.label for c in configs]
    seen: dict[str, int] = {}
    out = []
    for c in configs:
        if labels.count(c.label) > 1:
            seen[c.label] = seen.get(c.label, 0) + 1
            c = replace(c, label=f"{c.label} #{seen[c.label]}")
        out.append(c)
    return out
