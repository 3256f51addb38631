"""The run directory: its format and the functions that read and write it (train, diagnose, compare and queues
call them). Two other modules write into it: training/run_log.py appends metrics.jsonl rows, and run_export.py
copies a finished run's files into a record.

runs/<ID>/            one seed: the run itself; several seeds (`train --seeds`): runs/<ID>/seed-<N>/ each
  config.json        the resolved experiment (the sidecar of model.safetensors)
  meta.json          seed, code version, torch version, device, world size
  metrics.jsonl      one JSON object per logged step (metrics.jsonl.gz in an exported record: run_export.py)
  summary.json       status (running | interrupted | failed | finished), final metrics, wall time, resumes
  model.safetensors  the final weights (the EMA weights when EMA is on): what `decoder = "<ID>"` loads;
                     written before summary.json says finished, absent from a record exported without it
  checkpoints/step_<N>/
    model.safetensors, ema.safetensors (EMA on), state.rank<r>.pt (optimizer, RNG, ACT carry, ...)

A checkpoint directory is written as step_<N>.tmp and renamed when complete, so a kill at any moment
leaves the previous checkpoint intact; `latest_checkpoint` ignores *.tmp leftovers. The weights a run is
judged by (compare --per-puzzle, diagnose --run) are `judged_weights`: its final weights, or while it is
in progress the latest checkpoint's EMA weights (its model weights without EMA).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from etrmtrm_cli.config import Experiment, check_name, dict_differences
from etrmtrm_cli.errors import CheckpointError, ConfigError, RunError, first_line
from etrmtrm_cli.run_lock import RunLock

if TYPE_CHECKING:  # torch and safetensors are imported where weights are read or written: `status` needs neither
    from torch import Tensor, nn

CONFIG = "config.json"
META = "meta.json"
METRICS = "metrics.jsonl"
METRICS_GZ = "metrics.jsonl.gz"
SUMMARY = "summary.json"
FINAL_WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
_PREFIX = "step_"
Row = dict[str, Any]  # one metrics.jsonl line: step plus metric values (None where NaN)


@dataclass(frozen=True)
class RunFiles:
    """A run directory's files, as written by training/loop.py."""

    exp_id: str
    run_dir: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    summary: dict[str, Any]
    rows: list[Row]


SEED_PREFIX = "seed-"
ASIDE = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?$")  # runs/<ID>.old-<time>[-<n>]/: moved aside by --force (_aside_name)


def run_path(runs_dir: Path, exp_id: str, seed: int | None = None) -> Path:
    """runs/<ID>/ for a run of one seed, runs/<ID>/seed-<N>/ for seed N of a run of several seeds."""
    base = runs_dir / check_name(exp_id, "run")
    return base if seed is None else base / f"{SEED_PREFIX}{seed}"


def seed_folders(base: Path) -> list[Path]:
    """runs/<ID>/seed-<N>/ folders, by N (not seed-0.old-<time>/, which --force moved aside)."""
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and p.name.startswith(SEED_PREFIX)
             and p.name[len(SEED_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(SEED_PREFIX):]))


def seed_runs(runs_dir: Path, exp_id: str) -> list[Path]:
    """Every run of an experiment: runs/<ID>/ itself when it is a run, and each runs/<ID>/seed-<N>/ (by N)."""
    base = runs_dir / check_name(exp_id, "run")
    found = [base] if (base / CONFIG).is_file() else []
    return found + [p for p in seed_folders(base) if (p / CONFIG).is_file()]


def runs_without_config(runs_dir: Path, exp_id: str) -> list[Path]:
    """Folders of an experiment that hold a run's files but no config.json: `seed_runs` cannot count them, so a
    reader that would silently leave them out names them instead."""
    base = runs_dir / exp_id
    folders = [base, *seed_folders(base)] if base.is_dir() else []
    return [p for p in folders if not (p / CONFIG).is_file() and any((p / name).is_file() for name in
                                                                      (SUMMARY, META, METRICS, METRICS_GZ))]


def decoder_run(runs_dir: Path, exp_id: str) -> Path | None:
    """The one finished run a `decoder = "<ID>"` loads: runs/<ID>/ if it is one, else its lowest seed."""
    finished = [run for run in seed_runs(runs_dir, exp_id) if (run / FINAL_WEIGHTS).is_file()]
    return finished[0] if finished else None


def experiment_folders(runs_dir: Path) -> list[Path]:
    """runs/<ID>/ folders, by name: not runs moved aside nor hidden folders (a sweep's .submitit)."""
    if not runs_dir.is_dir():
        return []
    return [c for c in sorted(runs_dir.iterdir())
            if c.is_dir() and not c.name.startswith(".") and not ASIDE.search(c.name)]


def run_dirs(runs_dir: Path) -> list[Path]:
    """Every run in `runs_dir`: runs/<ID>/ and runs/<ID>/seed-<N>/, not runs moved aside nor hidden folders."""
    found = []
    for child in experiment_folders(runs_dir):
        if (child / CONFIG).is_file():
            found.append(child)
        found += [p for p in sorted(child.iterdir()) if p.is_dir() and p.name.startswith(SEED_PREFIX)
                  and p.name[len(SEED_PREFIX):].isdigit() and (p / CONFIG).is_file()]
    return found


def decoder_starts(runs_dir: Path, decoder: str) -> dict[str, list[Path]]:
    """The runs in `runs_dir` whose config names `decoder` (e.g. "P0"), by the sha256 of the weights they started
    from (meta.json "decoder"). Runs whose files cannot be read are left out."""
    starts: dict[str, list[Path]] = {}
    for run in run_dirs(runs_dir):
        try:
            named, started = read_json(run / CONFIG).get("decoder"), read_json(run / META).get("decoder")
        except RunError:
            continue
        if named == decoder and isinstance(started, dict) and started.get("sha256"):
            starts.setdefault(started["sha256"], []).append(run)
    return starts


def config_hash(config: dict[str, Any]) -> str:
    """Identifies a configuration whatever its name, parent and seed: runs with one hash are seeds of one
    configuration (E2b, E3a and E4b are E0b's), never separate evidence."""
    same = {k: v for k, v in config.items() if k not in ("id", "description", "parent", "seed")}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Settings a resumed run may change: they decide how long it runs, how often it evaluates and saves, or its
# label, never what the model or the data is. Any other difference is refused, naming the keys.
RESUMABLE_KEYS = frozenset({"description", "parent", "train.max_steps", "train.epochs", "train.eval_interval",
                            "train.checkpoint_interval", "train.keep_checkpoints", "train.eval_batch_size"})


def read_config(run_dir: Path) -> Experiment:
    """The run's config.json through the current schema, so that settings added since it started take their
    defaults; every error names the file."""
    path = run_dir / CONFIG
    try:
        return Experiment.model_validate(read_run_config(run_dir))
    except ValidationError as err:
        first = err.errors()[0]
        raise RunError(f"{path}: not a config this version can read ({err.error_count()} problem(s), first: "
                       f"{'.'.join(map(str, first['loc'])) or '(config)'}: {first['msg']})") from None
    except ConfigError as err:  # from the encoder registry: e.g. the run's encoder is not installed here
        raise RunError(f"{path}: {err}") from None


def saved_config(run_dir: Path) -> dict[str, Any]:
    """read_config as plain data, for comparing settings."""
    return read_config(run_dir).model_dump(mode="json")


def config_changes(saved: dict[str, Any], exp: Experiment) -> tuple[dict[str, tuple[Any, Any]], str]:
    """(every setting in which `saved` differs from `exp`: (old, new); the ones outside RESUMABLE_KEYS as text)."""
    changed = dict_differences(saved, exp.model_dump(mode="json"))
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_KEYS}
    return changed, "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in sorted(refused.items()))


def finished_run_differences(run_dir: Path, exp: Experiment, steps: int, dtype_resolved: bool = False) -> str:
    """How a finished run differs from `exp` trained for `steps` steps, as text ("" where it is that run): a queue
    or sweep skips it as done only then, or it would stand for `exp` in every comparison without being it (a
    `--set` run under its name, a short smoke test, a float32 run among the bfloat16 seeds `auto` would add).
    `dtype_resolved`: `exp` computes in the dtype the machine that would train it chose (runtime.choose_dtype); where
    that machine is unknown (a SLURM job's), the dtype `auto` or an emulated bfloat16 chose is no difference. Nor is
    a decoder file named by another path."""
    saved = saved_config(run_dir)
    requested, ran = exp.arch.forward_dtype, saved["arch"]["forward_dtype"]
    if not dtype_resolved and (requested == "auto" or (requested, ran) == ("bfloat16", "float32")):
        saved["arch"]["forward_dtype"] = requested
    if saved.get("decoder") != exp.decoder and _same_decoder_file(run_dir, exp.decoder):
        saved["decoder"] = exp.decoder
    _, lines = config_changes(saved, exp)
    total = read_summary(run_dir).get("total_steps")
    return "; ".join(filter(None, [lines, f"steps: {total} in the run, {steps} now" if total != steps else ""]))


def _same_decoder_file(run_dir: Path, decoder: str) -> bool:
    """Whether `decoder`, a file here, holds the weights the run started from (meta.json's sha256)."""
    path = Path(decoder)
    started = read_json(run_dir / META).get("decoder") if (run_dir / META).is_file() else None
    return path.is_file() and isinstance(started, dict) and started.get("sha256") == file_sha256(path)


def file_sha256(path: Path) -> str:
    """The first 16 hex digits of a file's sha256: identifies a decoder's weights across machines."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> RunLock:
    """Lock the run for this process: refuse to overwrite a run; --force moves the old one aside (never
    deletes it, and never while another process writes it)."""
    if resume:
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run to resume; start it without --resume")
        lock = RunLock(run_dir)
        if latest_checkpoint(run_dir) is None:
            lock.release()
            raise RunError(f"{run_dir}: nothing to resume (no checkpoint); start over with --force "
                           "(the old run is moved aside, not deleted)")
        return lock
    if run_dir.exists():
        if not force:
            how = "continue it with --resume, or start over" if latest_checkpoint(run_dir) else (
                "it has no checkpoint to resume from; start over")
            raise RunError(f"{run_dir} exists: {how} with --force (the old run is moved aside, not deleted)")
        with RunLock(run_dir):
            _rename(run_dir, _aside_name(run_dir))
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise RunError(f"{run_dir} was just created by another process; one process writes a run at a time") from None
    except OSError as err:
        raise RunError(f"{run_dir}: cannot create the run directory ({err.strerror})") from None
    return RunLock(run_dir)


def check_run_layout(run_dir: Path, per_seed: bool) -> None:
    """runs/<ID>/ holds one run or seed runs (seed-<N>/), never both: a run of the other kind there would hide
    them from compare and status, or move them aside with it. And no file stands where a folder of it goes."""
    if file := next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None):
        raise RunError(f"{file}: a file where a folder is expected; move it away, or pass another --runs-dir")
    if per_seed and (run_dir.parent / CONFIG).is_file():
        raise RunError(f"{run_dir.parent} is a run without seeds, so seed runs cannot go inside it: move it "
                       "aside first, or use another --runs-dir")
    seeds = [] if per_seed else [p.name for p in seed_folders(run_dir)]
    if seeds:
        raise RunError(f"{run_dir} holds the seed runs {', '.join(seeds)}: train them with --seeds; a run without "
                       "seeds cannot share their directory (move them aside first, or use another --runs-dir)")


def _aside_name(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = (run_dir.with_name(f"{run_dir.name}.old-{stamp}{f'-{n}' if n else ''}") for n in range(1000))
    return next(c for c in candidates if not c.exists())


def _rename(src: Path, dst: Path) -> None:
    try:
        src.rename(dst)
    except OSError as err:
        raise RunError(f"{src}: cannot move it aside to {dst.name} ({err.strerror})") from None


def run_status(run_dir: Path) -> str:
    """'finished' (says so: its final weights were saved first, though an exported record may leave them out),
    'resumable' (a checkpoint to continue from), 'unsaved' (started, stopped before its first checkpoint) or
    'new' (no run directory)."""
    if read_summary(run_dir).get("status") == "finished":
        return "finished"
    if latest_checkpoint(run_dir) is not None:
        return "resumable"
    return "unsaved" if run_dir.exists() else "new"


def write_run_files(run_dir: Path, config: dict[str, Any], meta: dict[str, Any], total_steps: int) -> None:
    """config.json, meta.json and a "running" summary.json of a new run."""
    write_json(run_dir / CONFIG, config)
    write_json(run_dir / META, meta)
    write_json(run_dir / SUMMARY, {"status": "running", "step": 0, "total_steps": total_steps})


def mark_running(run_dir: Path, total_steps: int) -> None:
    """summary.json says "running" while a resumed run trains, with the length it trains to now (a new
    --max-steps), its other fields kept."""
    write_json(run_dir / SUMMARY, {**read_summary(run_dir), "status": "running", "total_steps": total_steps})


def record_resume_changes(run_dir: Path, config: dict[str, Any], changed: dict[str, tuple[Any, Any]],
                          step: int) -> None:
    """A resume that changed settings allowed to change: config.json takes the new values, meta.json
    records what changed at which step."""
    meta = read_json(run_dir / META) if (run_dir / META).is_file() else {}
    if not isinstance(meta.get("resumed_with_changes", []), list):
        raise RunError(f"{run_dir / META}: resumed_with_changes is not a list of changes; the run's files were "
                       "edited or damaged")
    history = [*meta.get("resumed_with_changes", []),
               {"step": step, "changed": {k: list(v) for k, v in sorted(changed.items())}}]
    write_json(run_dir / META, {**meta, "resumed_with_changes": history})
    write_json(run_dir / CONFIG, config)


def write_summary(run_dir: Path, *, status: str, step: int, total_steps: int, wall_time_s: float,
                  last: dict[str, float], error: str | None, resumed: bool) -> None:
    """summary.json: status (finished | interrupted | failed, with the error), the wall time of all sessions and
    how many of them resumed the run (`resumes`, absent for a run never resumed)."""
    previous = read_summary(run_dir) if resumed else {}
    write_json(run_dir / SUMMARY, {
        "status": status, "step": step, "total_steps": total_steps, "wall_time_s": wall_time_s, "last": last,
        **({"error": error} if error else {}), **({"resumes": int(previous.get("resumes", 0)) + 1} if resumed else {}),
    })


RUN_STATES = ("running", "interrupted", "failed", "finished")  # summary.json "status"


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json, or {} where the run has none; its status is one of RUN_STATES."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return {}
    summary = read_json(path)
    if summary.get("status") not in RUN_STATES:
        raise RunError(f"{path}: status {summary.get('status')!r} is not one of {', '.join(RUN_STATES)}")
    return summary


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write atomically (temp file + rename): a full disk or a read-only directory leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write ({err.strerror}); the previous version is kept") from None


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file of the run directory, which must hold a `kind` (an object unless said otherwise)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except OSError as err:
        raise RunError(f"{path}: cannot read ({err.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise RunError(f"{path}: expected a JSON {_JSON_NAMES.get(kind, kind.__name__)}, "
                       f"found {_JSON_NAMES.get(type(value), type(value).__name__)}")
    return value


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def load_runs(runs_dir: Path, exp_ids: Sequence[str]) -> list[RunFiles]:
    """Every run of every named experiment (each seed of it); one error naming every experiment without a
    run and the command that produces it."""
    if not exp_ids:
        raise ConfigError("compare needs at least one run, e.g. `etrmtrm compare E0a E0b`")
    found = {exp_id: seed_runs(runs_dir, exp_id) for exp_id in exp_ids}
    check_configs(runs_dir, exp_ids)
    missing = [e for e, runs in found.items() if not runs]
    if missing:
        raise RunError("\n".join(f"{runs_dir / e}: no such run (no {CONFIG}, no {SEED_PREFIX}<N>/); produce it "
                                 f"with `etrmtrm train {e}`" for e in missing))
    return [load_run(run) for runs in found.values() for run in runs]


def check_configs(runs_dir: Path, exp_ids: Sequence[str]) -> None:
    """Every run folder of these experiments has its config.json (runs_without_config)."""
    if lacking := [p for exp_id in exp_ids for p in runs_without_config(runs_dir, exp_id)]:
        raise RunError(f"{', '.join(map(str, lacking))}: a run without {CONFIG}, so what it ran is unknown: restore "
                       "the file, or move the folder out of the runs directory")


RUN_CONFIG_KEYS = ("id", "profile", "arch", "data", "train")  # what every run's config.json holds


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """config.json as written, with what every run's holds: without it, defaults would stand in for everything."""
    config: dict[str, Any] = read_json(run_dir / CONFIG)
    if missing := [key for key in RUN_CONFIG_KEYS if key not in config]:
        raise RunError(f"{run_dir / CONFIG}: not a run's config (no {', '.join(missing)})")
    return config


def load_run(run_dir: Path) -> RunFiles:
    config = read_run_config(run_dir)
    meta_path = run_dir / META
    meta = read_json(meta_path) if meta_path.is_file() else {}
    summary = read_summary(run_dir) or {"status": "running"}
    metrics = metrics_path(run_dir)
    rows = read_metrics(metrics, strict=True)
    if summary.get("status") == "finished":
        _check_finished_metrics(metrics, rows, summary)
    return RunFiles(str(config["id"]), run_dir, config, meta, summary, rows)


def _check_finished_metrics(path: Path, rows: list[Row], summary: dict[str, Any]) -> None:
    """A finished run's metrics reach its last step: every figure of it is read from them, and a missing, empty or
    cut file would show as figures missing, without a word of why."""
    if not path.is_file():
        raise RunError(f"{path}: {'not a file' if path.exists() else 'missing'}, in a finished run (its figures "
                       "are read from it)")
    last, steps = (rows[-1]["step"] if rows else None), summary.get("step")
    if last is None:
        raise RunError(f"{path}: holds no metrics row, in a finished run")
    if isinstance(steps, int) and last < steps:
        raise RunError(f"{path}: ends at step {last}, where the finished run trained {steps} steps (cut short?)")


def metrics_path(run_dir: Path) -> Path:
    """metrics.jsonl, or an exported record's metrics.jsonl.gz."""
    plain = run_dir / METRICS
    return run_dir / METRICS_GZ if not plain.is_file() and (run_dir / METRICS_GZ).is_file() else plain


def read_metrics(path: Path, *, strict: bool = False, tail_bytes: int | None = None) -> list[Row]:
    """metrics.jsonl's rows (objects with an integer step), in file order; with `tail_bytes`, only those in
    the file's last `tail_bytes` bytes (what a status needs of a long run).

    A kill during an append leaves a partial last line: it is skipped. Any other line that is not such a
    row is an error when `strict`, else skipped (resume re-logs every step past its checkpoint anyway)."""
    if not path.is_file():
        return []
    try:
        if path.suffix == ".gz":  # a record: small, read whole
            lines = gzip.decompress(path.read_bytes()).decode("utf-8", "replace").splitlines()
        else:
            with path.open("rb") as fh:
                start = max(0, path.stat().st_size - tail_bytes) if tail_bytes is not None else 0
                fh.seek(start)
                lines = fh.read().decode("utf-8", "replace").splitlines()[1 if start else 0:]  # the first may be cut
    except (OSError, EOFError) as err:  # EOFError: a truncated .gz
        raise RunError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif strict and n != len(lines):
            raise RunError(f"{path}: line {n} is not a metrics row (a JSON object with an integer step)")
    return rows


def judged_weights(run_dir: Path) -> Path:
    """The weights a run is judged by: final, else the latest checkpoint's EMA (or model) weights; an error
    naming why where there are none."""
    final = run_dir / FINAL_WEIGHTS
    if final.is_file():
        return final
    latest = latest_checkpoint(run_dir)
    if latest is None:
        if run_status(run_dir) == "finished":
            raise CheckpointError(f"{run_dir}: finished, but its {FINAL_WEIGHTS} is missing (a record holds it only "
                                  "when exported with --weights)")
        raise CheckpointError(f"{run_dir}: no weights yet (no checkpoint); train it further first")
    ema = latest / "ema.safetensors"
    return ema if ema.is_file() else latest / "model.safetensors"


def load_judged_weights(run_dir: Path, tries: int = 3) -> tuple[Path, dict[str, Tensor]]:
    """judged_weights and their tensors. A run that trains now prunes old checkpoints: one chosen and then pruned
    before it was read is chosen again, from the checkpoints there are then."""
    for _ in range(tries - 1):
        path = judged_weights(run_dir)
        try:
            return path, load_weights(path)
        except CheckpointError:
            if path.exists():  # damaged, not pruned
                raise
    path = judged_weights(run_dir)  # the last try: pruned again and again, it fails as it is
    return path, load_weights(path)


def read_sidecar(weights: Path) -> dict[str, Any]:
    """The resolved config saved beside a model.safetensors file."""
    sidecar = weights.parent / CONFIG
    if not sidecar.is_file():
        raise CheckpointError(f"{weights}: no {CONFIG} beside it; is it one of our checkpoints?")
    config: dict[str, Any] = read_json(sidecar)
    return config


def save_weights(path: Path, state: dict[str, Tensor]) -> None:
    """Write atomically (temp file, flushed to disk, then renamed): a kill or a full disk leaves the old file."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    try:
        save_file({k: v.detach().contiguous().clone().cpu() for k, v in state.items()}, str(tmp))
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except Exception as err:  # OSError, or safetensors' own error for a full disk
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write ({_reason(err, path)}); the previous checkpoint is kept") from None


def _flush_to_disk(path: Path) -> None:
    """fsync a file or a directory: a rename that makes it visible must not outlive its contents in a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_fitting(model: nn.Module, weights: Mapping[str, Tensor], source: Path | str) -> None:
    """Weights that fit `model` exactly, or one error naming what does not fit (`source`: where they came from)."""
    target = model.state_dict()
    problems = [f"{k} missing" for k in target if k not in weights]
    problems += [f"{k} not in this model" for k in weights if k not in target]
    problems += [f"{k} is {tuple(v.shape)} in the file, {tuple(target[k].shape)} in the model"
                 for k, v in weights.items() if k in target and v.shape != target[k].shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"{source}: the weights do not fit the run's model: {'; '.join(problems[:3])}{more}")
    model.load_state_dict(weights)


def load_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: unreadable weights ({err})") from None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"{_PREFIX}{step:08d}"


def temp_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where step `step` is written before `commit_checkpoint` makes it visible."""
    return checkpoint_dir(run_dir, step).with_suffix(".tmp")


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory for step `step` (replacing what a previous try left there)."""
    tmp = temp_checkpoint_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: Path, keep: int) -> Path:
    """Make a fully written checkpoint visible, then drop all but the newest `keep`. A step saved again (a stop
    on a checkpoint step) replaces its checkpoint by two renames, never by deleting it first: a kill between
    them leaves the step's old copy aside (`.old`, which no listing counts) and the previous step's checkpoint
    as the latest, never a half-deleted one."""
    final = tmp.with_suffix("")
    aside = final.with_suffix(".old")
    for path in (*tmp.iterdir(), tmp):  # its files on disk before the rename that makes it the latest
        _flush_to_disk(path)
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.suffix == "")


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir / CHECKPOINTS)
    return found[-1] if found else None


def save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    try:
        torch.save(state, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError of its writer
        raise RunError(f"{path}: cannot write ({_reason(err, path)}); the previous checkpoint is kept") from None


def _reason(err: BaseException, path: Path) -> str:
    """Why a write failed, in words: the OS's reason, else the library's first line (torch and safetensors
    report a full disk in their own words) with the space left."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    first = first_line(err)
    try:
        return f"{first}; {shutil.disk_usage(path.parent).free // 1024} KiB free on its disk"
    except OSError:
        return first


def load_state(path: Path) -> dict[str, Any]:
    state = safe_torch_load(path, "training state")
    if not isinstance(state, dict) or not {"step", "world_size", "optimizers"} <= set(state):
        raise CheckpointError(f"{path}: not a training state written by etrmtrm (no step, world_size, optimizers)")
    return state


def safe_torch_load(path: Path, what: str) -> Any:
    """torch.load(weights_only=True): tensors and plain data only; a file that would run code is refused."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a non-zip file warns before failing; the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except pickle.UnpicklingError as err:
        needs = re.search(r"GLOBAL ([\w.]+)", str(err))
        if needs:
            raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and plain data, "
                                  f"which could run code when loaded (it needs {needs[1]}); only weights are "
                                  "ever loaded") from None
        raise CheckpointError(f"{path}: not a readable {what} (corrupt, truncated, or not a torch file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError, TypeError) as err:
        # a text file read as a legacy pickle fails inside the unpickler: KeyError, IndexError, ...
        raise CheckpointError(f"{path}: not a readable {what} ({type(err).__name__}: {first_line(err)})") from None
