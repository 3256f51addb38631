"""A resolved experiment: frozen, validated configs of its data, model (arch) and training.

experiments_file.py reads experiments.toml and resolves an experiment from its layers into these.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from etrmtrm_cli.errors import ConfigError

# A profile may change only how big things are, never what an experiment compares.
PROFILE_KEYS: dict[str, frozenset[str]] = {
    "arch": frozenset(
        {"hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "puzzle_emb_len",
         "context_tokens", "forward_dtype"}
    ),
    "data": frozenset(
        {"max_grid_size", "max_demos", "num_aug", "eval_num_aug", "train_groups", "eval_groups"}
    ),
    "train": frozenset(
        {"epochs", "max_steps", "eval_interval", "checkpoint_interval", "lr_warmup_steps", "batch_divisor",
         "lr_scale", "eval_batch_size"}
    ),
}
ARC_SOURCES = ("arc-agi-1", "arc-agi-2")
# Experiment and queue IDs: not empty, no '/', not absolute, no leading '.' (so never '.', '..' or hidden).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, where: str) -> str:
    """An experiment or queue ID names a directory under the runs directory: it must not name a path."""
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid ID: use letters, digits, '_', '-' and '.' (not first), "
            "at most 64 characters; an ID names a directory under the runs directory, never a path"
        )
    return name


# Why the upper bounds (values past them can only be typos, and would reach the allocator or never end):
BOUND_REASONS = {
    "hidden_size": "TRM uses 512; the tool's models are small",
    "num_heads": "TRM uses 8", "expansion": "TRM uses 4", "L_layers": "TRM uses 2",
    "H_cycles": "TRM uses 3; every cycle is run at every ACT step", "L_cycles": "TRM uses 4 (6 on Sudoku)",
    "puzzle_emb_len": "TRM uses 16 prefix positions", "encoder_num_layers": "the plan uses 2 to 4",
    "halt_max_steps": "TRM uses 16; an eval runs every ACT step of every example",
    "max_demos": "ARC tasks have at most 10 demonstration pairs",
    "num_aug": "TRM uses 1000 augmentations per task", "eval_num_aug": "TRM votes over 1000 views",
    "epochs": "TRM's ARC runs use 100,000", "max_steps": "a billion optimizer steps is no run",
    "global_batch_size": "the plan uses 256", "eval_batch_size": "the plan uses 256",
    "keep_checkpoints": "each checkpoint is a full copy of the weights and optimizer",
    "seed": "seeds key 32-bit numpy and torch generators",
}


def names_a_run(decoder: str) -> bool:
    """Whether a `decoder` setting names an experiment's run (P0) rather than a checkpoint file: not 'none', no
    path separator or suffix, and no file of that name here."""
    return decoder != "none" and "/" not in decoder and not Path(decoder).suffix and not Path(decoder).exists()


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # lr = inf is a typo, never a setting

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for an int or float: `--set train.lr=true` would train at lr 1.0
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"a number, not {str(value).lower()}")
        return value


def _numeric(annotation: Any) -> bool:
    """int or float, alone or in a union (int | None), and not bool."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (
        annotation,)
    return bool not in kinds and any(k in (int, float) for k in kinds)


class DataConfig(Frozen):
    """What the model trains and is evaluated on: task sources, how many groups, canvas, demos, augmentation."""

    train_sources: tuple[str, ...] = Field(
        ("arc-agi-1",), min_length=1,
        description="'arc-agi-1' / 'arc-agi-2' (their training tasks) or folders of ARC task JSON files",
    )
    eval_sources: tuple[str, ...] = Field(
        ("arc-agi-1",), min_length=1,
        description="'arc-agi-1' / 'arc-agi-2' (their evaluation tasks) or folders of ARC task JSON files",
    )
    train_groups: int | Literal["all"] = Field(32, description="base tasks trained on (deterministic subset)")
    subset_seed: int = Field(0, ge=0, le=2**32 - 1, description="draws which tasks are used; the training "
                             "seed never changes the tasks, so the seeds of a comparison share them")
    eval_groups: int | Literal["all"] = Field(32, description="held-out base tasks evaluated on")
    max_grid_size: int = Field(30, ge=1, le=30, description="canvas side S; tasks with a larger grid are left out")
    max_demos: int = Field(10, ge=1, le=32, description="demo slots per example; extra demos are dropped")
    num_aug: int = Field(1000, ge=0, le=100_000, description="augmentations per train task besides the original")
    eval_num_aug: int = Field(1000, ge=0, le=100_000, description="augmented views per eval task voted over (pass@k)")
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

    hidden_size: int = Field(512, ge=8, le=8192)
    num_heads: int = Field(8, ge=1, le=256)
    expansion: float = Field(4.0, gt=0, le=64)
    L_layers: int = Field(2, ge=1, le=64)
    H_cycles: int = Field(3, ge=1, le=64)
    L_cycles: int = Field(4, ge=1, le=64)
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    puzzle_emb_len: int = Field(16, ge=1, le=256, description="prefix positions P before the grid tokens")
    context_tokens: int = Field(16, ge=1, description="prefix positions the encoder fills; the rest stay zero")
    halt_max_steps: int = Field(16, ge=1, le=1024)
    halt_exploration_prob: float = Field(0.1, ge=0.0, le=1.0)
    no_ACT_continue: bool = True
    forward_dtype: Literal["float32", "bfloat16", "auto"] = "float32"  # auto: training/runtime.py
    loss_type: Literal["stablemax", "softmax"] = "stablemax"
    recurrent_encoder_type: str = "static"
    encoder_type: Literal["standard"] = "standard"
    encoder_num_layers: int = Field(2, ge=1, le=64)
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
    epochs: int = Field(20000, ge=1, le=10**7)
    max_steps: int | None = Field(None, ge=1, le=10**9, description="stop here instead of at the epochs' step count")
    eval_interval: int = Field(1000, ge=1)
    checkpoint_interval: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1, le=1000)
    global_batch_size: int = Field(256, ge=1, le=65536)
    batch_divisor: int = Field(1, ge=1, description="set by a profile: global_batch_size is divided by it")
    eval_batch_size: int | None = Field(None, ge=1, le=65536, description="default: the training batch size")
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
    id: str = Field(description="names runs/<id>/: never a path (SAFE_NAME)")
    description: str = ""
    model: Literal["etrm", "trm"] = Field("etrm", description="'trm' = learned puzzle embedding (P0)")
    decoder: str = Field(
        "none", min_length=1,
        description="'P0' (a finished run of ours), a TRM step_N file or one of our checkpoints; 'none' = scratch",
    )
    allow_decoder_mismatch: bool = Field(False, description="load a decoder whose cycles differ from ours")
    parent: str | None = Field(None, description="the experiment `compare` judges this one against (the "
                               "plan's comparison: E0b against E0a, the week 2-3 variants against E0b)")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    profile: str = "cpu"
    data: DataConfig = DataConfig()
    arch: ArchConfig = ArchConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid ID: letters, digits, '_', '-' and '.' (not first)")
        return value

    @model_validator(mode="after")
    def _check_encoder(self) -> Experiment:
        if self.model == "etrm":
            from etrmtrm_cli.encoders.registry import validate_encoder_params

            validate_encoder_params(self.arch.recurrent_encoder_type, self.arch.encoder_params)
        return self


def changed_keys(exp: Experiment, base: Experiment) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (base value, this value) for every setting where `exp` differs from `base`."""
    skip = {"id", "description", "parent"}
    return dict_differences(base.model_dump(exclude=skip), exp.model_dump(exclude=skip))


def dict_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value in a, value in b) for every leaf where two nested dicts differ."""
    out: dict[str, tuple[Any, Any]] = {}
    _diff(a, b, "", out)
    return out


def _diff(a: Any, b: Any, prefix: str, out: dict[str, tuple[Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{prefix}{key}.", out)
    elif a != b:
        out[prefix.rstrip(".")] = (a, b)


class SweepConfig(Frozen):
    """How `etrmtrm sweep` runs its jobs: the [sweep] table of experiments.toml, then the command line."""

    executor: Literal["auto", "local", "slurm"] = Field(
        "auto", description="auto: SLURM when `sinfo` answers, else local processes")
    jobs: int = Field(1, ge=1, le=1024, description="local: runs at once; the cores are split between them")
    partition: str | None = Field(None, min_length=1, description="SLURM partition (default: the cluster's)")
    time_min: int | None = Field(None, ge=1, le=60 * 24 * 365, description="time limit per job in minutes; "
                                 "SLURM default 1440, local default none")
    gpus_per_job: int = Field(0, ge=0, le=64)
    cpus_per_job: int | None = Field(None, ge=1, le=1024, description="SLURM: cores per job (its thread count)")
    mem_gb: float | None = Field(None, gt=0, le=65536, description="SLURM: memory per job")
    array_parallelism: int = Field(256, ge=1, le=100_000, description="SLURM: array tasks running at once")
    signal_delay_s: int = Field(120, ge=10, le=86400, description="how long before its time limit a job is told "
                                "to checkpoint and requeue")
    max_requeues: int = Field(10, ge=0, le=1000, description="requeues per job after its time limit (a preempted "
                              "job is requeued by SLURM whatever this says)")
    account: str | None = Field(None, min_length=1, description="SLURM account")
    qos: str | None = Field(None, min_length=1, description="SLURM quality of service")

    @model_validator(mode="after")
    def _check_time_limit(self) -> SweepConfig:
        # A job is told to checkpoint signal_delay_s before its limit: a shorter limit would stop it as it starts
        if self.time_min is not None and 60 * self.time_min < 2 * self.signal_delay_s:
            raise ValueError(f"time_min {self.time_min} is too short for signal_delay_s {self.signal_delay_s}: a job "
                             f"is told to checkpoint {self.signal_delay_s} s before its limit, so the limit must be at "
                             f"least twice that ({-(-2 * self.signal_delay_s // 60)} min) for it to train at all")
        return self
