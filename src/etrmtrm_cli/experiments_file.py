"""experiments.toml: read, check and resolve experiments.

A resolved experiment is built in four layers, later ones winning:
``[base]`` -> ``[experiments.<ID>]`` -> ``[profiles.<name>]`` (size and length only) -> ``--set`` overrides.
It is validated once, as a whole, and every error names the file, the experiment, the key path and
the layer that set the bad value.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, ValidationError

from etrmtrm_cli.config import (
    ARC_SOURCES,
    BOUND_REASONS,
    PROFILE_KEYS,
    Experiment,
    SweepConfig,
    check_name,
    names_a_run,
)
from etrmtrm_cli.errors import ConfigError, ConfigKeyError
from etrmtrm_cli.rundir import config_hash


class ExperimentsFile(BaseModel):
    """The parsed file, before any experiment is resolved."""

    model_config = ConfigDict(frozen=True)

    path: Path
    base: dict[str, Any]
    experiments: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    queues: dict[str, tuple[str, ...]]
    sweep: SweepConfig = SweepConfig()

    @property
    def ids(self) -> list[str]:
        return list(self.experiments)

    def resolve(
        self, exp_id: str, profile: str, overrides: Sequence[str] = (), world_size: int = 1
    ) -> Experiment:
        """Merge the layers for one experiment and validate the result."""
        self._require_experiment(exp_id)
        return self._resolve(exp_id, self.experiments[exp_id], profile, overrides, world_size)

    def resolve_base(self, profile: str) -> Experiment:
        """The base alone at a profile: what `etrmtrm experiments` compares each experiment with."""
        return self._resolve("base", {}, profile, (), 1)

    def _resolve(
        self, exp_id: str, exp_layer: dict[str, Any], profile: str, overrides: Sequence[str], world_size: int
    ) -> Experiment:
        if profile not in self.profiles:
            valid = ", ".join(self.profiles) or "none defined in the file"
            raise ConfigError(f"{self.path}: unknown profile {profile!r}; valid: {valid}")
        override_tree = parse_overrides(overrides, self.path)
        layers = {
            "base": self.base,
            f"experiments.{exp_id}": exp_layer,
            f"profiles.{profile}": self.profiles[profile],
            "--set": override_tree,
        }
        self._check_layers(exp_id, layers)
        merged: dict[str, Any] = {}
        for layer in layers.values():
            merged = deep_merge(merged, layer)
        merged.update(id=exp_id, profile=profile)
        self._check_references(exp_id, merged, layers)
        try:
            exp = Experiment.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(_describe(err, self.path, exp_id, layers)) from None
        except ConfigError as err:  # from the encoder registry
            raise ConfigError(f"{self.path}: {exp_id}: {err}{_encoder_origin(err, layers)}") from None
        if exp.train.batch_size % world_size:
            raise ConfigError(
                f"{self.path}: {exp_id}: train.global_batch_size: batch {exp.train.batch_size} is not "
                f"divisible by the world size {world_size}"
            )
        if (exp.train.eval_batch_size or 0) % world_size:  # each rank evaluates an equal share of every batch
            raise ConfigError(f"{self.path}: {exp_id}: train.eval_batch_size: {exp.train.eval_batch_size} is not "
                              f"divisible by the world size {world_size}")
        return exp

    def _check_layers(self, exp_id: str, layers: Mapping[str, Mapping[str, Any]]) -> None:
        """What a merge would lose silently: a section set to a non-table (`arch = 5` replaces [base.arch] whole),
        and the two keys the tool sets itself (id: the table's name; profile: --profile)."""
        for origin, tree in layers.items():
            for key, value in tree.items():
                if key in ("id", "profile"):
                    chosen = "the experiment's table name" if key == "id" else "chosen with --profile"
                    raise ConfigError(f"{self.path}: {exp_id}: {key}: not a setting, {chosen} (set in {origin})")
                if _section_model([key]) is not None and not isinstance(value, Mapping):
                    raise ConfigError(f"{self.path}: {exp_id}: {key}: must be a table of settings, not "
                                      f"{value!r} (set in {origin})")

    def _check_references(self, exp_id: str, merged: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]]
                          ) -> None:
        """parent and decoder name experiments of this file (a decoder may also be a checkpoint's path); data
        sources are ARC's or folders here (checked before any run: a job would fail on it, one by one)."""
        def set_in(key: str, section: str | None = None) -> str:
            return next(name for name, tree in reversed(layers.items())
                        if key in (tree.get(section) or {} if section else tree))

        data = merged.get("data")
        for key in ("train_sources", "eval_sources"):
            sources = data.get(key) if isinstance(data, Mapping) else None
            for source in sources if isinstance(sources, list | tuple) else ():
                if isinstance(source, str) and source not in ARC_SOURCES and not Path(source).is_dir():
                    raise ConfigError(
                        f"{self.path}: {exp_id}: data.{key}: {source!r} is neither one of {', '.join(ARC_SOURCES)} "
                        f"nor a folder of ARC task JSON files here{_did_you_mean(source, ARC_SOURCES)} "
                        f"(set in {set_in(key, 'data')})")

        parent = merged.get("parent")
        if parent is not None and parent not in self.experiments:
            raise ConfigError(f"{self.path}: {exp_id}: parent: unknown experiment {parent!r}"
                              f"{_did_you_mean(parent, self.experiments)} (set in {set_in('parent')})")
        decoder = merged.get("decoder")
        if isinstance(decoder, str) and decoder not in self.experiments and names_a_run(decoder):
            raise ConfigError(
                f"{self.path}: {exp_id}: decoder: {decoder!r} is neither an experiment of this file nor a file here"
                f"{_did_you_mean(decoder, self.experiments)}; a decoder is 'none', an experiment ID, or a "
                f"checkpoint's path (a run of another file: runs/<ID>/model.safetensors) (set in {set_in('decoder')})")

    def jobs(self, target: str, profile: str, overrides: Sequence[str], seeds: Sequence[int] | None,
             world_size: int = 1) -> list[tuple[Experiment, bool]]:
        """The runs `train <target> [--seeds ...]` makes, in order: (experiment, one of several seeds?).

        With seeds, each experiment runs once per seed, except a pretrained decoder another experiment of
        the file starts from (P0): it runs once, at its own seed, and every seed of its users loads it.
        Seed-major (seed 0 of every experiment, then seed 1, ...): a sweep cut short leaves its arms with
        equal numbers of seeds, which is what a comparison needs."""
        if seeds is not None and "seed" in parse_overrides(overrides, self.path):
            raise ConfigError("--set seed=... and --seeds both choose the seed: use --seeds alone")
        decoders = {decoder_of(self.base, self.experiments, e) for e in self.experiments}
        ids = self.targets(target)
        once = [(self.resolve(e, profile, overrides, world_size), False) for e in ids
                if seeds is None or e in decoders]
        per_seed = [(self.resolve(e, profile, [*overrides, f"seed={s}"], world_size), True)
                    for s in seeds or () for e in ids if e not in decoders]
        return once + per_seed

    def same_configuration(self, a: str, b: str, profile: str) -> bool:
        """Whether experiments a and b resolve at `profile` to one configuration (in everything but name,
        description and parent): E2b, E3a and E4b are E0b's in the plan. False where either does not resolve."""
        try:
            return len({config_hash(self.resolve(e, profile).model_dump(mode="json")) for e in (a, b)}) == 1
        except ConfigError:
            return False

    def targets(self, name: str) -> tuple[str, ...]:
        """An experiment ID or a queue name -> the experiment IDs to run, in order."""
        if name in self.queues:
            return self.queues[name]
        self._require_experiment(name)
        return (name,)

    def _require_experiment(self, exp_id: str) -> None:
        if exp_id in self.queues:
            raise ConfigError(f"{self.path}: {exp_id!r} is a queue ({', '.join(self.queues[exp_id])}), and this "
                              "command takes one experiment: name one of them")
        if exp_id not in self.experiments:
            known = [*self.experiments, *self.queues]
            raise ConfigError(
                f"{self.path}: unknown experiment or queue {exp_id!r}{_did_you_mean(exp_id, known)} "
                f"(experiments: {', '.join(self.experiments)}; queues: {', '.join(self.queues) or 'none'})"
            )


Run = tuple[Experiment, bool]  # an experiment resolved at its seed, and whether it is one of several seeds


def split_repeats(runs: Sequence[Run], has_runs: Callable[[str], bool] = lambda exp_id: False
                  ) -> tuple[list[Run], list[tuple[Experiment, Experiment]]]:
    """(the runs to train, [(a run left out, the earlier run it repeats)]). A run whose resolved config and seed are
    an earlier run's of another experiment (E2b's are E0b's in the plan) would repeat it bit for bit: training is
    deterministic for a seed. It is left out where its experiment has no run yet (`has_runs`), and `compare` reads
    the other experiment's runs for it; an experiment with runs of its own trains on as before."""
    first: dict[tuple[str, int], Experiment] = {}
    keep, repeats = [], []
    for exp, per_seed in runs:
        earlier = first.setdefault((config_hash(exp.model_dump(mode="json")), exp.seed), exp)
        if earlier.id == exp.id or has_runs(exp.id):
            keep.append((exp, per_seed))
        else:
            repeats.append((exp, earlier))
    return keep, repeats


def load_experiments(path: Path) -> ExperimentsFile:
    """Read and structurally check experiments.toml; experiments are validated by `resolve`."""
    if not path.is_file():
        what = "not a file" if path.exists() else "no such experiments file"
        raise ConfigError(f"{path}: {what} (pass --experiments PATH)")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text.removeprefix("\ufeff"))  # a byte-order mark, as some editors write: not TOML's
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {err.start}); expected TOML") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    unknown = set(raw) - {"base", "experiments", "profiles", "queues", "sweep"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level table(s) {', '.join(sorted(unknown))}; "
            "valid: base, experiments, profiles, queues, sweep"
        )
    experiments = _table(raw, "experiments", path)
    if not experiments:
        raise ConfigError(f"{path}: defines no [experiments.<ID>] table")
    _check_unique_ids(experiments, path)
    profiles = _table(raw, "profiles", path)
    for name, prof in profiles.items():
        _check_profile(name, prof, path)
    queues: dict[str, tuple[str, ...]] = {}
    for name, members in _table(raw, "queues", path).items():
        check_name(name, f"{path}: queues")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{path}: queues.{name}: must be a list of experiment IDs")
        if name in experiments:
            raise ConfigError(f"{path}: queues.{name}: a queue cannot share its name with an experiment")
        if not members:
            raise ConfigError(f"{path}: queues.{name}: empty; a queue lists the experiments it runs, in order")
        for member in members:
            if member not in experiments:
                raise ConfigError(f"{path}: queues.{name}: unknown experiment {member!r}"
                                  f"{_did_you_mean(member, experiments)}")
            if members.count(member) > 1:
                raise ConfigError(f"{path}: queues.{name}: lists {member!r} twice; a run is trained once")
        queues[name] = tuple(members)
    base = _table(raw, "base", path)
    _check_decoder_cycles(base, experiments, path)
    for exp_id, body in experiments.items():
        parent = body.get("parent")
        if parent is not None and parent not in experiments:
            raise ConfigError(f"{path}: experiments.{exp_id}.parent: unknown experiment {parent!r}")
    _check_parent_cycles(base, experiments, path)
    sweep = sweep_config(_table(raw, "sweep", path), f"{path}: sweep.")
    return ExperimentsFile(path=path, base=base, experiments=experiments, profiles=profiles, queues=queues,
                           sweep=sweep)


def _check_parent_cycles(base: Mapping[str, Any], experiments: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """An experiment is compared with its parent, the parent with its own: a chain that comes back (E0b's parent
    E0b, or E0b <-> E0c, or a parent in [base] that its own experiment inherits) would compare a run with itself."""
    def parent_of(exp_id: str) -> Any:
        return experiments[exp_id].get("parent", base.get("parent"))

    for exp_id in experiments:
        chain = [exp_id]
        while (parent := parent_of(chain[-1])) is not None and parent in experiments:
            if parent in chain:
                where = "base.parent" if "parent" not in experiments[chain[-1]] else f"experiments.{chain[-1]}.parent"
                raise ConfigError(f"{path}: {where}: the parents come back round ({' -> '.join([*chain, parent])}); "
                                  "each experiment is compared with its parent, so the chain must end")
            chain.append(parent)


def sweep_config(values: Mapping[str, Any], where: str, base: SweepConfig | None = None) -> SweepConfig:
    """Validate sweep settings (the [sweep] table, or command-line values over it): one line per problem,
    `where` + the key (e.g. "experiments.toml: sweep.jobs: ..." or "--jobs: ..."), unknown keys with a hint."""
    merged = {**(base.model_dump(exclude_unset=True) if base else {}), **values}
    try:
        return SweepConfig.model_validate(merged)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(key, list(SweepConfig.model_fields), n=1)
                msg = (f"unknown key{f'; did you mean {hint[0]!r}?' if hint else ''} "
                       f"(valid: {', '.join(SweepConfig.model_fields)})")
            if not key:  # a check of several settings together: its message names them
                label = "sweep settings" if "{key}" in where else where.rstrip(".")
            else:
                label = where.format(key=key.replace("_", "-")) if "{key}" in where else f"{where}{key}"
            lines.append(f"{label}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def decoder_of(base: Mapping[str, Any], experiments: Mapping[str, Any], exp_id: str) -> Any:
    """The `decoder` an experiment starts from, as the file sets it (its own table, else [base])."""
    return experiments[exp_id].get("decoder", base.get("decoder", "none"))


def _check_decoder_cycles(base: Mapping[str, Any], experiments: Mapping[str, Any], path: Path) -> None:
    """`decoder = "<ID>"` starts from another experiment's run: those links must not loop back."""
    for start in experiments:
        chain = [start]
        while isinstance(nxt := decoder_of(base, experiments, chain[-1]), str) and nxt in experiments:
            if nxt in chain:
                loop = " -> ".join([*chain[chain.index(nxt):], nxt])
                raise ConfigError(f"{path}: experiments.{start}.decoder: the decoders form a cycle ({loop}); "
                                  "no run can start first")
            chain.append(nxt)


def parse_overrides(overrides: Sequence[str], path: Path) -> dict[str, Any]:
    """``["arch.halt_max_steps=8", ...]`` -> a nested dict; values are parsed as TOML values."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. arch.halt_max_steps=8")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word is a string: --set arch.recurrent_encoder_type=static
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table")
        node[leaf] = value
    return tree


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "encoder_params":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _did_you_mean(name: str, known: Sequence[str] | Mapping[str, Any]) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _table(raw: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {name} must be a table")
    return value


def _check_unique_ids(experiments: Mapping[str, Any], path: Path) -> None:
    seen: dict[str, str] = {}
    for exp_id, body in experiments.items():
        check_name(exp_id, f"{path}: experiments")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: experiments.{exp_id}: must be a table")
        if exp_id.lower() in seen:
            raise ConfigError(
                f"{path}: duplicate experiment ID {exp_id!r} (already defined as {seen[exp_id.lower()]!r})"
            )
        seen[exp_id.lower()] = exp_id


def _check_profile(name: str, profile: Any, path: Path) -> None:
    if name == "auto":  # --profile auto chooses paper or cpu: a profile of that name could never be used
        raise ConfigError(f"{path}: profiles.auto: 'auto' is --profile's choice of paper or cpu, not a profile name; "
                          "name it otherwise")
    if not isinstance(profile, dict):
        raise ConfigError(f"{path}: profiles.{name}: must be a table")
    for section, body in profile.items():
        allowed = PROFILE_KEYS.get(section)
        if allowed is None or not isinstance(body, dict):
            raise ConfigError(
                f"{path}: profiles.{name}.{section}: a profile may only set [arch], [data] and [train] sizes"
            )
        for key in body:
            if key not in allowed:
                raise ConfigError(
                    f"{path}: profiles.{name}.{section}.{key}: a profile changes sizes, never what an "
                    f"experiment compares; allowed here: {', '.join(sorted(allowed))}"
                )


def _describe(err: ValidationError, path: Path, exp_id: str, layers: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per pydantic error: file, experiment, key path, message, and which layer set it."""
    lines: list[list[str]] = []  # [key, message, where] each
    unions: dict[str, list[str]] = {}  # a union setting's key -> its line (one for all its branches)
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        union = _union_branch(loc)  # pydantic gives one error per branch, at a made-up key (data.train_groups.int)
        loc = loc[:-1] if union else loc
        key = ".".join(loc) or "(experiment)"
        if union and key in unions:  # "Input should be a valid integer, ...; or 'all'"
            unions[key][1] += f"; or {e['msg'].removeprefix('Input should be ')}"
            continue
        origin = next((name for name, tree in reversed(layers.items()) if _has_path(tree, loc)), None)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("less_than_equal", "greater_than_equal") and loc and loc[-1] in BOUND_REASONS:
            msg += f" ({BOUND_REASONS[loc[-1]]})"
        if e["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            valid = ", ".join(section.model_fields) if section else ""
            hint = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1) if section else []
            msg = f"unknown key{f'; did you mean {hint[0]!r}?' if hint else ''} (valid: {valid})"
        lines.append([key, msg, f" (set in {origin})" if origin else ""])
        if union:
            unions[key] = lines[-1]
    return "\n".join(f"{path}: {exp_id}: {key}: {msg}{where}" for key, msg, where in lines)


def _union_branch(loc: Sequence[str]) -> bool:
    """Whether an error's last loc names the branch of a union-typed setting rather than a key."""
    parent = _section_model(loc[:-2]) if len(loc) >= 2 else None
    return parent is not None and loc[-2] in parent.model_fields and _section_model(loc[:-1]) is None


def _encoder_origin(err: ConfigError, layers: Mapping[str, Mapping[str, Any]]) -> str:
    """" (set in <layer>)" for the encoder key an error is about; for an encoder setting, also where the encoder
    type that judged it was set (a setting from one layer may be wrong only for a type from another)."""
    if not isinstance(err, ConfigKeyError):
        return ""
    found = []
    if origin := _setting_layer(err.key, layers):
        found.append(f"set in {origin}")
    if err.key.startswith("arch.encoder_params") and (origin := _setting_layer("arch.recurrent_encoder_type", layers)):
        found.append(f"arch.recurrent_encoder_type set in {origin}")
    return f" ({'; '.join(found)})" if found else ""


def _setting_layer(key: str, layers: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The last layer that sets `key` or a table above it (arch.encoder_params = {...} sets ...params.x)."""
    loc = key.split(".")
    return next((name for name, tree in reversed(layers.items())
                 if any(_has_path(tree, loc[:n]) for n in range(len(loc), 1, -1))), None)


def _section_model(loc: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Experiment
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _has_path(tree: Mapping[str, Any], loc: Sequence[str]) -> bool:
    node: Any = tree
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
