"""Before a queue or sweep trains: each run it skips, resumes or starts must be the experiment it will count as.

`compare` reads runs/<ID>/ and runs/<ID>/seed-<N>/ as runs of <ID>, whatever they trained. A finished run that a
queue skips, or a new seed started beside finished ones, of another configuration would stand under that name as
if it were <ID>: refused, naming the settings. Seeds of two machines may differ in the dtype chosen there (a run
keeps the dtype it started in): that is only said, with the setting that keeps one dtype. Library code: it raises
or returns the notes, and the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import RunError
from etrmtrm_cli.rundir import check_run_layout, finished_run_differences, run_status, saved_config, seed_runs

if TYPE_CHECKING:
    import torch


def check_planned(runs: Sequence[tuple[Experiment, bool, Path]], max_steps: int | None, device: torch.device | None,
                  again: Callable[[Experiment, bool], str], *, states: Sequence[str] | None = None,
                  skips_finished: bool = True, force: bool = False) -> list[str]:
    """Every run a queue or sweep plans, (experiment, one of several seeds?, its folder), checked before any trains:
    its folder's layout; a finished run it skips (`skips_finished`) must be what it counts as (`again`: the command
    that trains it alone); a seed it resumes or starts anew beside its experiment's seeds is noted or refused.
    `states`: rundir.run_status of each, where the caller has them; `force`: every run starts over, together.
    -> the notes to print."""
    for _, per_seed, place in runs:
        check_run_layout(place, per_seed)
    states = states if states is not None else [run_status(place) for _, _, place in runs]
    new_seeds = {exp.id for (exp, per_seed, _), state in zip(runs, states, strict=True)
                 if per_seed and (force or state in ("new", "unsaved"))}  # experiments with a seed starting anew
    restarting = frozenset(place for _, _, place in runs) if force else frozenset()
    notes = []
    for (exp, per_seed, place), state in zip(runs, states, strict=True):
        if skips_finished and not force and state == "finished":
            check_finished_run(place, exp, max_steps, again(exp, per_seed), device)
        elif skips_finished and not force and state == "resumable" and per_seed:
            notes.append(resumed_dtype_note(place, exp, device, exp.id in new_seeds))
        elif per_seed and (force or state in ("new", "unsaved")):
            notes.append(check_new_seed(place, exp, max_steps, device, restarting))
    return [note for note in notes if note]


def check_finished_run(run_dir: Path, exp: Experiment, max_steps: int | None, again: str,
                       device: torch.device | None) -> None:
    """A finished run that a queue or sweep would skip as done (`again`: the command that trains it alone): refused
    where it is not `exp` as this command would train it on `device` (None: on a machine unknown here, a SLURM
    job's) (rundir.finished_run_differences)."""
    from etrmtrm_cli.sweep_cost import steps_of
    from etrmtrm_cli.training.runtime import choose_dtype

    here = exp if device is None else choose_dtype(exp, device).exp  # in the dtype it would compute in there
    if differs := finished_run_differences(run_dir, here, steps_of(exp, max_steps), dtype_resolved=device is not None):
        dtype = ""
        if device is not None and "arch.forward_dtype" in differs:
            ran = saved_config(run_dir)["arch"]["forward_dtype"]
            dtype = (f"; to train the rest in the dtype it ran in, add `--set arch.forward_dtype={ran}`"
                     if _computes_in(exp, ran, device) else
                     f"; it ran in {ran}, which this machine would emulate: train the rest on one like the machine "
                     "it ran on")
        seeds = "; name in --seeds each seed of it that differs too" if run_dir.name.startswith("seed-") else ""
        raise RunError(f"{run_dir}: finished, but not as {exp.id} is now ({differs}), so it cannot count as "
                       f"{exp.id}. Start it over with `{again} --force` (the old run is kept beside it{seeds}), or use "
                       f"another --runs-dir{dtype}")


def check_new_seed(run_dir: Path, exp: Experiment, max_steps: int | None, device: torch.device | None,
                   restarting: frozenset[Path] = frozenset()) -> str | None:
    """A seed that starts anew beside finished seeds of its experiment must be of their configuration, but for those
    the same command starts over too (`restarting`, --force): `compare` reads runs/<ID>/seed-<N>/ as seeds of <ID>,
    and one of another configuration would stand beside them under the same name. The dtype chosen on `device` is
    only noted (-> the note, or None): seeds of two machines may differ in it, as a resumed run may."""
    from etrmtrm_cli.sweep_cost import steps_of
    from etrmtrm_cli.training.runtime import choose_dtype

    note = None
    new = None if device is None else choose_dtype(exp, device).exp.arch.forward_dtype
    for sibling in _finished_siblings(run_dir, exp.id):
        if sibling in restarting:
            continue
        try:
            saved = saved_config(sibling)
            differs = finished_run_differences(sibling, exp.model_copy(update={"seed": saved.get("seed", exp.seed)}),
                                               steps_of(exp, max_steps))
        except RunError as err:
            raise RunError(f"{err} (a finished seed beside the new {run_dir.name}, which must be of its "
                           "configuration)") from None
        if differs:
            raise RunError(f"{run_dir}: a new seed of {exp.id} beside {sibling.name}, a finished seed of another "
                           f"configuration ({differs.replace(' in the run, ', ' there, ')}): compare would read both "
                           f"as {exp.id}. Train it as {sibling.name} was, start all of the seeds over together "
                           "(`etrmtrm train` with --force and --seeds naming each), or use another --runs-dir")
        ran = saved["arch"]["forward_dtype"]
        if note is None and new not in (None, ran):
            note = _dtype_note(f"{run_dir}: a new seed computing in {new} here, beside {sibling.name}, which ran in "
                               f"{ran}", exp, ran, device)
    return note


def resumed_dtype_note(run_dir: Path, exp: Experiment, device: torch.device | None, new_seeds: bool) -> str | None:
    """A stopped seed that a queue or sweep resumes keeps the dtype it started in. Where its experiment's other seeds
    are in another, finished ones or the new ones of the same command (`new_seeds`: auto's choice on `device`), its
    seeds split into two configurations in `compare`: said first, with the setting that keeps one dtype."""
    from etrmtrm_cli.training.runtime import choose_dtype

    ran = saved_config(run_dir)["arch"]["forward_dtype"]
    others = [saved_config(s)["arch"]["forward_dtype"] for s in _finished_siblings(run_dir, exp.id)]
    if new_seeds and device is not None:
        others.append(choose_dtype(exp, device).exp.arch.forward_dtype)
    other = next((dtype for dtype in others if dtype != ran), None)
    return None if other is None else _dtype_note(
        f"{run_dir}: stopped in {ran}, resumes in {ran} (a run keeps the dtype it started in), beside seeds of "
        f"{exp.id} in {other}", exp, ran, device)


def _finished_siblings(run_dir: Path, exp_id: str) -> list[Path]:
    """The finished seeds of `exp_id` beside `run_dir` (<runs>/<ID>/seed-<N>), itself left out."""
    return [s for s in seed_runs(run_dir.parent.parent, exp_id)
            if s != run_dir and s.parent == run_dir.parent and run_status(s) == "finished"]


def _dtype_note(says: str, exp: Experiment, ran: str, device: torch.device | None) -> str:
    """`says` (seeds of one experiment in two dtypes, one of them `ran`), what it means, and the setting that keeps
    `ran` where it works on `device`."""
    keep = f"; to train the rest in {ran} too, add `--set arch.forward_dtype={ran}`" if device is not None and \
        _computes_in(exp, ran, device) else ""
    return f"{says}: compare keeps the two dtypes apart as two configurations{keep}"


def _computes_in(exp: Experiment, dtype: str, device: torch.device) -> bool:
    """Whether `exp` asked to compute in `dtype` would on `device` (bfloat16 emulated on a CPU runs in float32)."""
    from etrmtrm_cli.training.runtime import choose_dtype, with_dtype

    return choose_dtype(with_dtype(exp, dtype), device).exp.arch.forward_dtype == dtype
