"""experiments.toml: frozen, validated experiment configs.

A resolved experiment is built in four layers, later ones winning:
``[base]`` -> ``[experiments.<ID>]`` -> ``[profiles.<name>]`` (sizes only) -> ``--set`` overrides.
It is validated once, as a whole, and every error names the file, the experiment, the key path and
the layer that set the bad value.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from etrmtrm_cli.errors import ConfigError

PROFILES = ("paper", "cpu", "tiny")

# A profile may change only how big things are, never what an experiment compares.
PROFILE_KEYS: dict[str, frozenset[str]] = {
    "arch": frozenset(
        {"hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "puzzle_emb_len",
         "context_tokens", "forward_dtype"}
    ),
    "data": frozenset(
        {"max_grid_size", "max_demos", "num_aug", "eval_num_aug", "train_groups", "eval_groups", "query_mode"}
    ),
    "train": frozenset(
        {"epochs", "max_steps", "eval_interval", "checkpoint_interval", "lr_warmup_steps", "batch_divisor",
         "lr_scale", "eval_batch_size"}
    ),
}
ARC_SOURCES = ("arc-agi-1", "arc-agi-2")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(Frozen):
    """What the model trains and is evaluated on (DESIGN.md "Data")."""

    train_sources: tuple[str, ...] = Field(
        ("arc-agi-1",), min_length=1,
        description="'arc-agi-1' / 'arc-agi-2' (their training tasks) or folders of ARC task JSON files",
    )
    eval_sources: tuple[str, ...] = Field(
        ("arc-agi-1",), min_length=1,
        description="'arc-agi-1' / 'arc-agi-2' (their evaluation tasks) or folders of ARC task JSON files",
    )
    train_groups: int | Literal["all"] = Field(32, description="base tasks trained on (deterministic subset)")
    eval_groups: int | Literal["all"] = Field(32, description="held-out base tasks evaluated on")
    max_grid_size: int = Field(30, ge=1, le=30, description="canvas side S; tasks with a larger grid are left out")
    max_demos: int = Field(10, ge=1, description="demo slots per example; extra demos are dropped")
    num_aug: int = Field(1000, ge=0, description="augmentations per train task besides the original")
    eval_num_aug: int = Field(1000, ge=0, description="augmented views per eval task voted over (pass@k)")
    query_mode: Literal["test", "leave_one_out"] = "test"
    translate: bool = Field(True, description="random translation of train examples on the canvas")
    on_bad_task: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _check_eval_aug(self) -> DataConfig:
        if self.eval_num_aug > self.num_aug:
            raise ValueError(
                f"eval_num_aug {self.eval_num_aug} > num_aug {self.num_aug}: only num_aug augmentations "
                "of each task exist"
            )
        return self

    @field_validator("train_groups", "eval_groups")
    @classmethod
    def _positive_groups(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be a positive number of tasks or 'all'")
        return v


class ArchConfig(Frozen):
    """The decoder (TRM) and the encoder that fills its prefix."""

    hidden_size: int = Field(512, ge=8)
    num_heads: int = Field(8, ge=1)
    expansion: float = Field(4.0, gt=0)
    L_layers: int = Field(2, ge=1)
    H_cycles: int = Field(3, ge=1)
    L_cycles: int = Field(4, ge=1)
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    puzzle_emb_len: int = Field(16, ge=1, description="prefix positions P before the grid tokens")
    context_tokens: int = Field(16, ge=1, description="prefix positions the encoder fills; the rest stay zero")
    halt_max_steps: int = Field(16, ge=1)
    halt_exploration_prob: float = Field(0.1, ge=0.0, le=1.0)
    no_ACT_continue: bool = True
    forward_dtype: Literal["float32", "bfloat16"] = "float32"
    loss_type: Literal["stablemax", "softmax"] = "stablemax"
    recurrent_encoder_type: str = "static"
    encoder_type: Literal["standard"] = "standard"
    encoder_num_layers: int = Field(2, ge=1)
    encoder_norm_style: Literal["post", "pre"] = "post"
    encoder_params: dict[str, Any] = Field(default_factory=dict, description="the chosen encoder's own settings")
    encoder_convergence_tol: float = Field(
        0.01, gt=0, description="encoder_carry_change below this counts as converged"
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> ArchConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2 and self.pos_encodings == "rope":
            raise ValueError("RoPE needs an even head size (hidden_size / num_heads)")
        if self.context_tokens > self.puzzle_emb_len:
            raise ValueError(f"context_tokens {self.context_tokens} > puzzle_emb_len {self.puzzle_emb_len}")
        return self


class TrainConfig(Frozen):
    epochs: int = Field(20000, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop here instead of at the epochs' step count")
    eval_interval: int = Field(1000, ge=1)
    checkpoint_interval: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    global_batch_size: int = Field(256, ge=1)
    batch_divisor: int = Field(1, ge=1, description="set by a profile: global_batch_size is divided by it")
    eval_batch_size: int | None = Field(None, ge=1, description="default: the training batch size")
    lr: float = Field(1e-4, gt=0)
    lr_scale: float = Field(1.0, gt=0, description="set by a profile: every lr is multiplied by it (small models "
                            "take larger steps); ratios between experiments are kept")
    lr_warmup_steps: int = Field(2000, ge=0)
    lr_min_ratio: float = Field(1.0, ge=0, le=1, description="1 = constant after warmup, < 1 = cosine decay")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip_norm: float = Field(1.0, ge=0, description="0 = no clipping")
    encoder_lr_scale: float = Field(0.0, ge=0, description="0 = one lr for all; s > 0 = encoder lr x s")
    optimizer: Literal["adamw", "adam_atan2"] = "adamw"
    ema: bool = False
    ema_rate: float = Field(0.999, gt=0, lt=1)
    puzzle_emb_lr: float = Field(1e-2, gt=0)
    puzzle_emb_weight_decay: float = Field(0.1, ge=0)

    @property
    def scaled_lr(self) -> float:
        """The learning rate this profile actually trains with."""
        return self.lr * self.lr_scale

    @property
    def batch_size(self) -> int:
        """The global batch this profile actually trains with."""
        return self.global_batch_size // self.batch_divisor

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.global_batch_size % self.batch_divisor:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by the profile's "
                f"batch_divisor {self.batch_divisor}"
            )
        return self


class Experiment(Frozen):
    id: str
    description: str = ""
    model: Literal["etrm", "trm"] = Field("etrm", description="'trm' = learned puzzle embedding (P0)")
    decoder: str = Field(
        "none", min_length=1,
        description="'P0' (a finished run of ours), a TRM step_N file or one of our checkpoints; 'none' = scratch",
    )
    allow_decoder_mismatch: bool = Field(False, description="load a decoder whose cycles differ from ours")
    seed: int = 0
    profile: str = "cpu"
    data: DataConfig = DataConfig()
    arch: ArchConfig = ArchConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check_encoder(self) -> Experiment:
        if self.model == "etrm":
            from etrmtrm_cli.encoders.registry import validate_encoder_params

            validate_encoder_params(self.arch.recurrent_encoder_type, self.arch.encoder_params)
        return self


class ExperimentsFile(BaseModel):
    """The parsed file, before any experiment is resolved."""

    model_config = ConfigDict(frozen=True)

    path: Path
    base: dict[str, Any]
    experiments: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    queues: dict[str, tuple[str, ...]]

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
        merged: dict[str, Any] = {}
        for layer in layers.values():
            merged = deep_merge(merged, layer)
        merged.update(id=exp_id, profile=profile)
        try:
            exp = Experiment.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(_describe(err, self.path, exp_id, layers)) from None
        except ConfigError as err:  # from the encoder registry
            raise ConfigError(f"{self.path}: {exp_id}: {err}") from None
        if exp.train.batch_size % world_size:
            raise ConfigError(
                f"{self.path}: {exp_id}: train.global_batch_size: batch {exp.train.batch_size} is not "
                f"divisible by the world size {world_size}"
            )
        return exp

    def targets(self, name: str) -> tuple[str, ...]:
        """An experiment ID or a queue name -> the experiment IDs to run, in order."""
        if name in self.queues:
            return self.queues[name]
        self._require_experiment(name)
        return (name,)

    def _require_experiment(self, exp_id: str) -> None:
        if exp_id not in self.experiments:
            known = [*self.experiments, *self.queues]
            hint = difflib.get_close_matches(exp_id, known, n=1, cutoff=0.5)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{self.path}: unknown experiment or queue {exp_id!r}{did_you_mean} "
                f"(experiments: {', '.join(self.experiments)}; queues: {', '.join(self.queues) or 'none'})"
            )


def load_experiments(path: Path) -> ExperimentsFile:
    """Read and structurally check experiments.toml; experiments are validated by `resolve`."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiments file (pass --experiments PATH)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    unknown = set(raw) - {"base", "experiments", "profiles", "queues"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level table(s) {', '.join(sorted(unknown))}; "
            "valid: base, experiments, profiles, queues"
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
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{path}: queues.{name}: must be a list of experiment IDs")
        if name in experiments:
            raise ConfigError(f"{path}: queues.{name}: a queue cannot share its name with an experiment")
        for member in members:
            if member not in experiments:
                hint = difflib.get_close_matches(member, list(experiments), n=1, cutoff=0.5)
                did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"{path}: queues.{name}: unknown experiment {member!r}{did_you_mean}")
        queues[name] = tuple(members)
    return ExperimentsFile(
        path=path, base=_table(raw, "base", path), experiments=experiments, profiles=profiles, queues=queues
    )


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


def _table(raw: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {name} must be a table")
    return value


def _check_unique_ids(experiments: Mapping[str, Any], path: Path) -> None:
    seen: dict[str, str] = {}
    for exp_id, body in experiments.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: experiments.{exp_id}: must be a table")
        if exp_id.lower() in seen:
            raise ConfigError(
                f"{path}: duplicate experiment ID {exp_id!r} (already defined as {seen[exp_id.lower()]!r})"
            )
        seen[exp_id.lower()] = exp_id


def _check_profile(name: str, profile: Any, path: Path) -> None:
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
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc) or "(experiment)"
        origin = next((name for name, tree in reversed(layers.items()) if _has_path(tree, loc)), None)
        where = f" (set in {origin})" if origin else ""
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            valid = ", ".join(section.model_fields) if section else ""
            hint = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1) if section else []
            msg = f"unknown key{f'; did you mean {hint[0]!r}?' if hint else ''} (valid: {valid})"
        lines.append(f"{path}: {exp_id}: {key}: {msg}{where}")
    return "\n".join(lines)


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


def changed_keys(exp: Experiment, base: Experiment) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (base value, this value) for every setting where `exp` differs from `base`."""
    a, b = base.model_dump(exclude={"id", "description"}), exp.model_dump(exclude={"id", "description"})
    out: dict[str, tuple[Any, Any]] = {}
    _diff(a, b, "", out)
    return out


def _diff(a: Any, b: Any, prefix: str, out: dict[str, tuple[Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{prefix}{key}.", out)
    elif a != b:
        out[prefix.rstrip(".")] = (a, b)
