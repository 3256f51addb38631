"""The plan's verdict on a comparison: scenarios A-D against the ETRM baseline, red flags 1-3, and the best
configuration. Pure functions of the matrix rows (red flags 1-2, per run) and of the configurations over
seeds (scenarios, red flag 3, best): a scenario is named only when the 95 % interval of the paired per-seed
difference lies inside its band."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from etrmtrm_cli.analysis.configs import Configuration
from etrmtrm_cli.analysis.matrix import RunRow
from etrmtrm_cli.analysis.stats import (
    Band,
    Estimate,
    NoSharedSeed,
    classify,
    detectable_difference,
    paired_difference,
)
from etrmtrm_cli.analysis.text import num, pct, pct_interval, with_interval
from etrmtrm_cli.analysis.thresholds import (
    COLLAPSED_VAR,
    STARVED_GRAD_SHARE_SQ,
    UPDATE_RATIO_EXPLODING,
    UPDATE_RATIO_VANISHING,
)

# --- the plan's thresholds ("Expected Outcomes") ------------------------------------------------------------
# Success criterion: "Train accuracy >90%"; the scenarios compare against "E0a ~90%".
BASELINE_REFERENCE_ACC = 0.90
# Scenario A "Recurrence helps significantly": "E0b achieves >92% vs E0a ~90%" -> at least +2 points.
SIGNIFICANT_GAIN_PTS = 2.0
# Scenario B "Recurrence helps slightly": "E0b achieves ~91% vs E0a ~90%" -> from +0.5 up to +2 points.
SLIGHT_GAIN_PTS = 0.5
# Scenario C "No difference": "E0b achieves ~90% same as E0a" -> within half a point either way.
SAME_BAND_PTS = 0.5
# Scenario D "Recurrence hurts": "E0b achieves <85% when E0a achieves >90%" -> 5 points or more below.
CLEARLY_WORSE_PTS = 5.0
# Red Flag 1 "Implementation bug": "E0b fails completely (<50% train acc)" (E0b's configuration only: a variant
# below 50% may simply train worse), "Encoder variance collapses (<0.1)" and "Gradient flow issues" (any encoder
# run; the plan expects an encoder share of ~0.4; below 0.05 it is starved).
FAILED_ACC = 0.50  # the variance and gradient-share limits are diagnose's (one definition for both)
# Red Flag 2 "Instability": "training diverges or highly noisy", "Carry state exploding/vanishing". The
# plan gives no numbers; ours: the loss's step-to-step spread over the last 20% of steps above half its
# mean is "highly noisy"; a final loss above the first 10%'s mean is "diverges"; a carry update ratio
# outside [UPDATE_RATIO_VANISHING, UPDATE_RATIO_EXPLODING] (thresholds.py, with the measurements) is
# vanishing / exploding (the carry's own RMS is 1 by construction and cannot show it).
NOISY_LOSS_CV = 0.5
# Red Flag 3 "No improvement": "All ETRMTRM experiments <= ETRM baseline" -> no recurrent run is at least
# SLIGHT_GAIN_PTS above the static baseline (a smaller gain is noise, as in Scenario C).
NO_GAIN_PTS = SLIGHT_GAIN_PTS
# The scenarios as bands of the difference E0b - E0a in train-accuracy points; edges as the plan reads.
BANDS = (Band("A", SIGNIFICANT_GAIN_PTS, math.inf), Band("B", SLIGHT_GAIN_PTS, SIGNIFICANT_GAIN_PTS),
         Band("C", -SAME_BAND_PTS, SAME_BAND_PTS, lo_closed=False),
         Band("C/D", -CLEARLY_WORSE_PTS, -SAME_BAND_PTS, lo_closed=False, hi_closed=True),
         Band("D", -math.inf, -CLEARLY_WORSE_PTS, lo_closed=False, hi_closed=True))
TITLES = {"A": "recurrence helps significantly", "B": "recurrence helps slightly", "C": "no difference",
          "C/D": "recurrence slightly worse (between the plan's C and D)", "D": "recurrence hurts"}
# The same bands for a run that differs from the baseline in more than its encoder type (E3b: half the learning rate
# too): the title names the gap, not its cause.
MIXED_TITLES = {"A": "significantly better", "B": "slightly better", "C": "no difference",
                "C/D": "slightly worse (between the plan's C and D)", "D": "clearly worse"}
ONE_SEED = "one seed cannot separate the arms from noise"
NO_SPREAD = "every paired seed differs by the same amount: no spread to size an interval by, so no finding"
ENCODER_TYPE = "arch.recurrent_encoder_type"  # the setting a scenario judges (static against a recurrent one)
INCONCLUSIVE = "inconclusive"
# Figures that still have room when train accuracy sits at a ceiling (figure, what, unit, scale to points).
CEILING_FIGURES = (("train_em", "train exact accuracy", "points", 100.0), ("auc", "area under train accuracy",
                   "points", 100.0), ("steps_to_90", "steps to 90%", "steps", 1.0))
# The plan's "Comparison with ETRM" (and scenario A's "uses more steps productively", "encoder variance higher"):
# "converge faster/slower?", "more/fewer ACT steps?", "encoder variance higher/lower?". A scenario gives their
# paired differences as secondary figures, each at 95%, uncorrected.
WITH_ETRM_FIGURES = (("steps_to_90", "steps to 90%", "steps", 1.0), ("act_steps", "ACT steps", "steps", 1.0),
                     ("encoder_var", "encoder variance", "", 1.0))
# The plan's "Decision Points". After E0b: "If E0b succeeds (>90% train acc)" / "If E0b fails (<80% train acc)".
E0B_SUCCESS_ACC = 0.90
E0B_FAILURE_ACC = 0.80
# After Week 1, "recurrence shows improvement": the paired difference over the static baseline lies at or above
# +NO_GAIN_PTS (beyond scenario C's band), the same line as red flag 3. After Week 2, "significantly better than
# ETRM" is the plan's scenario A, at or above +SIGNIFICANT_GAIN_PTS, and "all similar to ETRM" its scenario C,
# every interval inside (-SAME_BAND_PTS, +SAME_BAND_PTS); a slight gain or a loss is neither branch.
# After Week 2 weighs the plan's "Week 2: Optimization" experiments, the configurations tried by then; week 3 and
# the rest come after it in the plan and have no decision point (their parent comparisons describe them).
WEEK_2 = frozenset({"E1a", "E2c", "E2d", "E3b"})


@dataclass(frozen=True)
class Scenario:
    run: str
    baseline: str
    delta_pts: float  # mean paired difference of train accuracy, points
    letter: str  # A | B | C | C/D | D, or "inconclusive" (the interval spans bands), or "?" (one seed)
    title: str
    evidence: list[str]
    caveats: list[str]
    difference: Estimate | None = None  # the paired per-seed difference (points), n and interval
    strength: str = ""  # for the headline: n, the interval, and whether it holds for every comparison at once


@dataclass(frozen=True)
class RedFlag:
    number: int
    title: str
    assessed: bool
    holds: bool
    evidence: list[str]
    action: str
    pending: bool = False  # runs it concerns still train: judged on the finished ones alone


@dataclass(frozen=True)
class Best:
    run: str
    baseline: str | None
    evidence: list[str]
    not_separated: tuple[str, ...] = ()  # the configurations whose paired lead interval does not put `run` above


@dataclass(frozen=True)
class ParentComparison:
    """A configuration against its parent in the plan (E0b vs E0a; a week-2/3 variant vs E0b): the paired
    difference of train accuracy and the settings that differ, so a gap is never labelled by the wrong cause."""

    run: str
    parent: str
    difference: Estimate | None  # train accuracy, points; None when no seed is shared
    finding: str  # "better" | "worse" | "no difference shown" | ONE_SEED | NO_SPREAD | "no seed in common" | ...
    #               | "no train accuracy logged"
    settings: list[str]  # "train.lr: 0.0003 -> 0.00015"
    evidence: list[str]
    strength: str = ""  # for the headline, as Scenario's


@dataclass(frozen=True)
class Decision:
    """One of the plan's decision points and the branch the intervals support, or why none is taken."""

    point: str  # "After E0b" | "After Week 1" | "After Week 2"
    decided: bool
    decision: str  # the plan's branch and its action, or "not decided: <why>"
    evidence: list[str]


@dataclass(frozen=True)
class Verdict:
    baseline: str | None
    baseline_why: str
    scenarios: list[Scenario]
    red_flags: list[RedFlag]
    best: Best | None
    parents: list[ParentComparison] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    parents_absent: list[str] = field(default_factory=list)  # "E2b (parent E0b)": a parent not among the compared


def pick_baseline(configs: Sequence[Configuration]) -> tuple[Configuration | None, str]:
    """The ETRM (static encoder) configuration, E0a's when several; else the first named. None where the chosen
    experiment's runs are of several configurations ("E0a #1", "E0a #2"): which of them is the baseline the runs
    cannot tell, and the scenarios and decision points judged against it are not drawn."""
    # a configuration with finished seeds before one with none yet (a seed of another dtype stopped on some machine)
    static = sorted((c for c in configs if c.first.model == "ETRM" and c.first.encoder == "static"),
                    key=lambda c: not c.n)
    if static:
        chosen = next((c for c in static if "E0a" in c.exp_ids), static[0])
        why = f"{chosen.label} is the ETRM baseline (static encoder)"
    elif configs:
        chosen = configs[0]
        why = f"no static-encoder run compared: {chosen.label}, the first named, is the baseline"
    else:
        return None, "no runs"
    if several := ambiguous(configs, chosen.exp_ids[0]):
        return None, (f"no baseline: {chosen.exp_ids[0]}'s runs are of {len(several)} configurations "
                      f"({', '.join(several)}), and the runs cannot tell which is the baseline; compare one of them "
                      "(another --runs-dir)")
    return chosen, why


def ambiguous(configs: Sequence[Configuration], exp_id: str) -> list[str]:
    """The labels of the configurations of `exp_id`'s finished runs, where there are several (none where one): an
    unfinished run is left out of every decision until it finishes, and so is the configuration it is of."""
    labels = [c.label for c in configs if exp_id in c.exp_ids and c.n]
    return labels if len(labels) > 1 else []


def points(config: Configuration, figure: str, scale: float = 100.0) -> dict[int, float]:
    """seed -> a figure of that seed in points (or steps with scale 1), seeds without it left out."""
    return {s: scale * v for s, v in config.per_seed(figure).items() if v is not None}


def no_interval(e: Estimate) -> str:
    """Why a paired difference has no interval: one seed, or the same difference in every seed (stats.py)."""
    return ONE_SEED if e.n < 2 else NO_SPREAD


def describe(e: Estimate, unit: str = "points") -> str:
    """'+1.23 points, 95% CI [+0.40, +2.06], n = 3' (one value: '+1.23 points, n = 1, no interval')."""
    if e.mean is None:
        return "no value"
    unit = f" {unit}" if unit else ""
    if e.interval is None:
        spread = "no interval" if e.n < 2 else "the same in every seed, no interval"
        return f"{e.mean:+.2f}{unit}, n = {e.n}, {spread}"
    lo, hi = e.interval
    return f"{e.mean:+.2f}{unit}, {100 * e.level:g}% CI [{lo:+.2f}, {hi:+.2f}], n = {e.n}"


def level(e: Estimate) -> str:
    """'97.2% ± 0.8 (n = 3)' for a fraction over seeds."""
    return f"{with_interval(e)} (n = {e.n})" if e.mean is not None else with_interval(e)


def unfinished(*configs: Configuration) -> list[str]:
    """A caveat for each run left out because it has not finished (configs.py: only finished runs count)."""
    return [f"{r.label} is {r.status_text}: left out until it finishes" for c in configs for r in c.pending]


def unpaired(base: Configuration, run: Configuration, diff: Estimate) -> list[str]:
    """A caveat naming the seeds of either arm that the paired difference left out (no value in one arm or both)."""
    left = [f"{c.label} s{s}" for c in (base, run) for s in c.seeds if s not in diff.seeds]
    return [f"seeds left out of the paired difference (a value missing in one arm): {', '.join(left)}"] if left else []


def paired_figure(base: Configuration, run: Configuration, figure: str, what: str, unit: str, scale: float
                  ) -> tuple[Estimate | None, str]:
    """The paired difference run - base of a figure, and the evidence line that gives it (None, "" without a
    seed in which both have it)."""
    fa, fb = points(base, figure, scale), points(run, figure, scale)
    reached = figure.startswith("steps_to")  # a seed without it never got there (censored), not just unlogged
    never = {c.label: never_reached(c, figure) if reached else [] for c in (base, run)}
    unlogged = [(c.label, c.n - len(f) - len(never[c.label]), c.n) for c, f in ((base, fa), (run, fb))]
    counts = [(label, len(seeds), c.n) for (label, seeds), c in zip(never.items(), (base, run), strict=True)]
    said_never = ", ".join(f"{k} of {n} {label}" for label, k, n in counts if k)
    said_unlogged = ", ".join(f"{k} of {n} {label}" for label, k, n in unlogged if k)
    if not set(fa) & set(fb):
        return None, f"{what}: no seed of both arms got there (never: {said_never})" if said_never else ""
    diff = paired_difference(fa, fb)
    line = f"{what}: {describe(diff, unit)}"
    if said_never:  # the seeds left out are the slowest ones: the difference is biased towards their arm
        slow = " and ".join(label for label, k, _ in counts if k)
        line += (f" over the seeds that got there; never: {said_never} (the slowest seeds, left out: this "
                 f"understates how slow {slow} is)")
    if said_unlogged:
        line += f"{';' if said_never else ' over the seeds that logged it;'} not logged: {said_unlogged}"
    return diff, line


def never_reached(config: Configuration, figure: str) -> list[int]:
    """The seeds that logged train accuracy but never reached a steps_to figure's level (censored at the run's
    length); a seed that logged no train accuracy is not among them: it has no figure at all."""
    logged, reached = points(config, "train_acc"), points(config, figure, 1.0)
    return [seed for seed in config.seeds if seed in logged and seed not in reached]


Figure = tuple[str, str, str, float]  # (RunRow figure, what it is, unit, scale to that unit)


def room_figures(base: Configuration, run: Configuration, figures: Sequence[Figure] = CEILING_FIGURES) -> list[str]:
    """Paired differences of `figures`: by default those that still have room when train accuracy is at a ceiling."""
    lines = [paired_figure(base, run, figure, what, unit, scale)[1] for figure, what, unit, scale in figures]
    return [line for line in lines if line]


def scenario(run: Configuration, base: Configuration, family: int = 1, also_differs: Sequence[str] = ()
             ) -> Scenario | None:
    """`run` against the static baseline in the plan's bands; `family`: how many configurations are judged
    against it in the same verdict (each interval stays at 95%; a caveat gives the one that holds for all);
    `also_differs`: the settings besides the encoder type in which `run` differs from `base`."""
    a, b = points(base, "train_acc"), points(run, "train_acc")
    if not a or not b:
        return None
    caveats = []
    try:
        diff = paired_difference(a, b)
    except NoSharedSeed:
        return Scenario(run.label, base.label, math.nan, "?", "no seed in common: the arms cannot be paired",
                        [f"{base.label} has seeds {sorted(a)}, {run.label} has seeds {sorted(b)}: train the same "
                         "seeds of both (`etrmtrm train <ID> --seeds N`)"], caveats)
    assert diff.mean is not None
    if diff.interval is None:
        letter, title = "?", no_interval(diff)
    else:
        band = classify(diff.interval, BANDS)
        letter, title = (band.name, TITLES[band.name]) if band else (INCONCLUSIVE, "the interval spans more than one "
                                                                     "of the plan's bands")
        if band and also_differs:
            names = ", ".join(s.split(":")[0] for s in also_differs)
            title = f"{MIXED_TITLES[band.name]}, with recurrence and {names} changed together"
    bands = ", ".join(f"{band.name} {band.describe()}" for band in BANDS)
    evidence = [f"train acc {level(base.estimate('train_acc'))} ({base.label}) vs "
                f"{level(run.estimate('train_acc'))} ({run.label})",
                f"paired difference over seeds {list(diff.seeds)}: {describe(diff)} (bands in points: {bands})"]
    base_acc = base.estimate("train_acc")
    if letter == INCONCLUSIVE:
        sd = None if base_acc.sd is None else 100 * base_acc.sd
        mde = detectable_difference(diff.sd, diff.n)
        evidence.append(f"with n = {diff.n}, a true difference of about {num(mde)} points from zero would be "
                        f"detected (80% power; from the paired spread; {base.label}'s seed-to-seed sd is {num(sd)} "
                        "points); naming a band takes more: its whole interval inside the band")
    secondary = WITH_ETRM_FIGURES
    if base_acc.mean is not None and 100 * base_acc.mean + SIGNIFICANT_GAIN_PTS > 100:
        caveats.append(f"ceiling: {base.label} is at {pct(base_acc.mean)}, so train accuracy has no room for "
                       f"scenario A (+{SIGNIFICANT_GAIN_PTS:g} points); judge by the figures that still have room")
        shown = {figure for figure, *_ in WITH_ETRM_FIGURES}
        secondary = (*[f for f in CEILING_FIGURES if f[0] not in shown], *WITH_ETRM_FIGURES)
    evidence += room_figures(base, run, secondary)
    if base_acc.mean is not None and base_acc.mean < BASELINE_REFERENCE_ACC:
        caveats.append(f"{base.label} is at {pct(base_acc.mean)}, below the plan's ~90% reference: the "
                       "scenarios assume a converged baseline")
    held = None
    if family > 1 and diff.interval is not None:
        wide, words = for_all_at_once(a, b, family)
        band = classify(wide, BANDS)
        held = (band is not None and band.name == letter) if letter in TITLES else None  # a band named, or none
        caveats.append(f"one of {family} configurations judged against {base.label}, each interval at 95%, so one "
                       f"of them may miss by chance; {words}, "
                       + (f"still scenario {band.name}" if band else "which spans more than one band"))
    if also_differs:  # e.g. E3b: a recurrent encoder and half the learning rate
        caveats.append(f"{run.label} differs from {base.label} in more than its encoder type "
                       f"({'; '.join(also_differs)}): the difference is theirs together, not recurrence's alone")
    caveats += unpaired(base, run, diff) + unfinished(run, base)
    if run.repeats or base.repeats:
        caveats.append(f"left out as repeats of a seed already counted: {', '.join(base.repeats + run.repeats)}")
    return Scenario(run.label, base.label, diff.mean, letter, title, evidence, caveats, diff,
                    strength(diff, family, held))


def strength(diff: Estimate, family: int = 1, held: bool | None = None) -> str:
    """A headline's evidence: 'n = 3, -2.16, 95% CI [-3.51, -0.80]', and where several comparisons are made at once,
    whether its finding holds for all of them (`held`, None where it names nothing an interval could lose)."""
    if diff.mean is None:
        return ""
    shown = f"n = {diff.n}, {diff.mean:+.2f}" + ("" if diff.interval is None else
                                                 f", {100 * diff.level:g}% CI [{diff.interval[0]:+.2f}, "
                                                 f"{diff.interval[1]:+.2f}]")
    if held is None or family < 2:
        return shown
    return shown + ("; it holds for all {} at once" if held else
                    "; at 95% for this comparison alone, not for all {} at once").format(family)


def red_flags(rows: Sequence[RunRow], configs: Sequence[Configuration], base: Configuration | None
              ) -> list[RedFlag]:
    # A run stopped short has no final figures: red flags 1-2 judge finished runs and name the others.
    not_judged = [f"not judged until it finishes: {r.label} ({r.status_text})" for r in rows if not r.finished]
    e0b = {r.config_hash for r in rows if r.exp_id == "E0b"}  # E0b's configuration (E2b, E3a, E4b are it too)
    rows = [r for r in rows if r.finished]
    encoders = [r for r in rows if r.model != "TRM"]
    bug = []
    for r in encoders:
        reasons = []
        if r.config_hash in e0b and r.train_acc is not None and r.train_acc < FAILED_ACC:
            reasons.append(f"train acc {pct(r.train_acc)} < {pct(FAILED_ACC)}")
        if r.encoder_var is not None and r.encoder_var < COLLAPSED_VAR:
            reasons.append(f"encoder var {num(r.encoder_var)} < {COLLAPSED_VAR:g} (collapse)")
        if r.grad_share_sq is not None and r.grad_share_sq < STARVED_GRAD_SHARE_SQ:
            reasons.append(f"grad encoder share² {num(r.grad_share_sq)} < {STARVED_GRAD_SHARE_SQ:g} (starved)")
        if reasons:
            bug.append(f"{r.label}: " + "; ".join(reasons))
    unstable = []
    for r in rows:
        reasons = []
        if r.loss_cv is not None and r.loss_cv > NOISY_LOSS_CV:
            reasons.append(f"train/loss CV {num(r.loss_cv)} > {NOISY_LOSS_CV:g} over the last 20% of steps")
        if r.diverged:
            reasons.append("final train/loss above its first 10% (diverging)")
        if r.update_ratio is not None and r.update_ratio > UPDATE_RATIO_EXPLODING:
            reasons.append(f"carry update ratio {num(r.update_ratio)} > {UPDATE_RATIO_EXPLODING:g} (exploding)")
        if r.update_ratio is not None and r.update_ratio < UPDATE_RATIO_VANISHING:
            reasons.append(f"carry update ratio {num(r.update_ratio)} < {UPDATE_RATIO_VANISHING:g} (vanishing)")
        if reasons:
            unstable.append(f"{r.label}: " + "; ".join(reasons))
    flags = [
        RedFlag(1, "implementation bug", bool(encoders), bool(bug), bug + not_judged,
                "debug carry management, gradient flow, reset logic (`etrmtrm diagnose --run runs/<ID>`); a "
                "collapse at high train accuracy may be a model that answers without its demos (its context-use "
                "check says)", bool(not_judged)),
        RedFlag(2, "instability", bool(rows), bool(unstable), unstable + not_judged,
                "check initialization, learning rate, gradient clipping", bool(not_judged)),
    ]
    flags.append(red_flag_3(configs, base))
    return flags


def red_flag_3(configs: Sequence[Configuration], base: Configuration | None) -> RedFlag:
    """"All ETRMTRM experiments <= ETRM baseline": holds when every recurrent configuration's interval of the
    paired difference lies below +NO_GAIN_PTS, does not hold when one lies at or above it (a gain shown);
    otherwise (intervals that straddle it, or one seed) it is not assessed: the data cannot tell."""
    recurrent = [c for c in configs if c.first.recurrent and points(c, "train_acc")]
    if base is None or base.first.encoder != "static" or not points(base, "train_acc") or not recurrent:
        return RedFlag(3, "no improvement", False, False, ["no baseline (see Baseline)" if base is None else
                                                           "needs train accuracy logged by a static-encoder baseline "
                                                           "and by at least one recurrent run"], "")
    waiting = [c for c in configs if c.first.recurrent and c.pending and not points(c, "train_acc")]
    shown = gains(recurrent, base, waiting)
    holds = shown.all_inside(-math.inf, NO_GAIN_PTS)
    why = "" if holds or shown.at_or_above(NO_GAIN_PTS) else shown.undecided(NO_GAIN_PTS)
    evidence = shown.evidence + ([f"the intervals cannot tell whether any recurrent configuration gains "
                                  f"{NO_GAIN_PTS:g} points: {why}"] if why else [])
    pending = any(c.pending for c in (base, *recurrent, *waiting))  # gains leaves them out until they finish
    return RedFlag(3, "no improvement", not why, holds, evidence, "document the null result, reconsider the hypothesis",
                   pending)


def best_configuration(configs: Sequence[Configuration], base: Configuration | None) -> Best | None:
    """Of the encoder configurations: highest mean train accuracy, then train EM (means over seeds). It is a
    ranking only where its paired lead over every other configuration lies above zero, all of them at once
    (Bonferroni: each lead at 1 - 0.05 / (k - 1) for k configurations): the runner-up's lead says nothing of a
    third with other seeds or more spread. Evidence: the lead over the runner-up, over the baseline, and over
    each configuration not separated from it."""
    ranked = [c for c in configs if c.first.model != "TRM" and c.estimate("train_acc").mean is not None]
    if not ranked:
        return None
    ranked.sort(key=lambda c: (c.estimate("train_acc").mean or 0.0, c.estimate("train_em").mean or 0.0),
                reverse=True)
    best = ranked[0]
    evidence = [f"{best.label}: train acc {level(best.estimate('train_acc'))}, "
                f"train EM {level(best.estimate('train_em'))}"]
    if base is best:
        evidence.append(f"the baseline {base.label} has the highest mean")
    family = max(1, len(ranked) - 1)  # its leads, which must all hold at once
    if family > 1:
        evidence.append(f"its {family} leads are each at {100 * (1 - 0.05 / family):g}%, so that all hold at once "
                        "at 95% (Bonferroni)")
    close = []
    for i, other in enumerate(ranked[1:]):
        name = f"the runner-up {other.label}" if i == 0 else other.label
        try:
            lead = paired_difference(points(other, "train_acc"), points(best, "train_acc"), level=1 - 0.05 / family)
        except NoSharedSeed:
            close.append(other.label)
            evidence.append(f"no seed in common with {name}: not separated")
            continue
        separated = lead.interval is not None and lead.interval[0] > 0
        if not separated:
            close.append(other.label)
        if separated and i > 0 and other is not base:
            continue
        line = f"train acc over {name}: {describe(lead)}"
        if lead.interval is not None and lead.interval[1] < 0:  # its mean over other seeds ranked it lower
            line += f"; {other.label} is ahead on the seeds both have"
        elif not separated:
            line += "; not separated, either may be the best"
        evidence += [line, *unpaired(other, best, lead)]
    if best.n < 2:
        evidence.append(f"{ONE_SEED}: the ranking may change with more seeds")
    return Best(best.label, base.label if base else None, evidence, tuple(close))


def parent_comparison(run: Configuration, parent: Configuration, settings: list[str], family: int = 1
                      ) -> ParentComparison:
    """`run` against `parent` on the paired train accuracy; `family`: how many parent comparisons the verdict
    makes (each finding stays at 95%; a line gives the interval that holds for all of them at once)."""
    if not (run.n and parent.n):
        return ParentComparison(run.label, parent.label, None, "no finished run yet", settings,
                                unfinished(parent, run))
    a, b = points(parent, "train_acc"), points(run, "train_acc")
    if not (a and b):
        return ParentComparison(run.label, parent.label, None, "no train accuracy logged", settings,
                                [f"{c.label}: no train accuracy logged by a finished run (it is logged at the "
                                 "steps where a slot halts: a run of fewer steps than arch.halt_max_steps may "
                                 "log none)" for c in (parent, run) if not points(c, "train_acc")])
    try:
        diff = paired_difference(a, b)
    except NoSharedSeed:
        return ParentComparison(run.label, parent.label, None, "no seed in common", settings,
                                [f"{parent.label} has seeds {sorted(a)}, {run.label} has seeds {sorted(b)}"])
    finding = no_interval(diff) if diff.interval is None else _direction(diff.interval)
    evidence = [f"train acc: {describe(diff)}", *unpaired(parent, run, diff)]
    held = None
    if family > 1 and diff.interval is not None and finding != "no difference shown":
        wide, words = for_all_at_once(a, b, family)
        held = _direction(wide) == finding
        evidence.append(f"one of {family} comparisons with a parent, each at 95%; {words}: "
                        + (f"still {finding}" if held else _direction(wide)))
    if finding == "no difference shown" and diff.sd == 0:  # an interval [0, 0]: no spread to size a test by
        evidence.append("every paired seed's difference is exactly 0: the runs' train accuracies are identical")
    elif finding == "no difference shown":
        evidence.append(f"with n = {diff.n}, a true difference of about "
                        f"{num(detectable_difference(diff.sd, diff.n))} points would be detected (80% power)")
    evidence += room_figures(parent, run)
    return ParentComparison(run.label, parent.label, diff, finding, settings, evidence,
                            strength(diff, family, held))


def parents_absent(configs: Sequence[Configuration]) -> list[str]:
    """The configurations whose parent is not among the compared: no parent comparison is made for them."""
    compared = {exp_id for c in configs for exp_id in c.exp_ids}
    return [f"{c.label} (parent {c.parent})" for c in configs if c.parent and c.parent not in compared]


def parent_comparisons(configs: Sequence[Configuration], differences: Mapping[str, Sequence[object]]
                       ) -> list[ParentComparison]:
    """Each configuration whose parent (config "parent") is among the compared, against it; where the parent's runs
    are of several configurations ("E0a #1", "E0a #2"), against the one that differs from it in the fewest settings."""
    pairs = []
    for c in configs:
        if parents := [p for p in configs if c.parent in p.exp_ids and p is not c]:
            pairs.append((c, min(parents, key=lambda p: len(settings_between(configs, differences, p, c)))))
    return [parent_comparison(c, parent, settings_between(configs, differences, parent, c), family=len(pairs))
            for c, parent in pairs]


def for_all_at_once(a: Mapping[int, float], b: Mapping[int, float], family: int) -> tuple[tuple[float, float], str]:
    """The paired interval of b - a that holds for `family` comparisons at once (Bonferroni: each at
    1 - 0.05 / family), and the words that give it."""
    wide = paired_difference(a, b, level=1 - 0.05 / family)
    assert wide.interval is not None
    lo, hi = wide.interval
    return wide.interval, (f"for all {family} at once at 95% (Bonferroni, {100 * wide.level:g}% each) it is "
                           f"[{lo:+.2f}, {hi:+.2f}]")


def settings_between(configs: Sequence[Configuration], differences: Mapping[str, Sequence[object]],
                     a: Configuration, b: Configuration) -> list[str]:
    """The settings in which b differs from a, "key: a's value -> b's" (differences: key -> value per config)."""
    i, j = (next(k for k, c in enumerate(configs) if c is x) for x in (a, b))
    return [f"{key}: {values[i]} -> {values[j]}" for key, values in differences.items() if values[i] != values[j]]


def _direction(interval: tuple[float, float]) -> str:
    """What a paired interval of `run - parent` shows: "better", "worse" or "no difference shown"."""
    return "better" if interval[0] > 0 else "worse" if interval[1] < 0 else "no difference shown"


def after_e0b(e0b: Configuration, base: Configuration | None) -> Decision:
    """E0b's train accuracy against the plan's success (>90%) and failure (<80%) lines, by its interval; a success
    that converges slower than a static baseline (`convergence`) is the plan's "works but slower than ETRM"."""
    acc = e0b.estimate("train_acc")
    evidence = [f"{e0b.label} train acc {level(acc)}"]
    base_acc = base.estimate("train_acc") if base is not None and base is not e0b else None
    if base is not None and base_acc is not None and base_acc.mean is not None and base_acc.mean < E0B_SUCCESS_ACC:
        evidence.append(f"the plan's lines assume E0a near 90%; {base.label} is at {level(base_acc)} here")
    evidence += unfinished(e0b)
    if acc.interval is None:
        return Decision("After E0b", False, f"not decided: {ONE_SEED} (no interval)", evidence)
    lo, hi = acc.interval
    if lo > E0B_SUCCESS_ACC and base is None:  # pick_baseline: E0a's runs are of several configurations
        return Decision("After E0b", False, "not decided between \"E0b succeeds\" and \"E0b works but converges "
                        "slower than ETRM\": E0b is above 90%, and the baseline to judge its convergence by is not "
                        "known (see Baseline)", evidence)
    slower = convergence(e0b, base, evidence) if lo > E0B_SUCCESS_ACC else None
    if slower:
        taken, decision = True, ("E0b works but converges slower than ETRM (>90% train acc, more steps to 90%): "
                                 "the plan reads \"recurrence adds overhead without clear benefit\"; proceed with "
                                 "E1, E2, E3 cautiously, looking for configurations where recurrence helps")
    elif lo > E0B_SUCCESS_ACC:  # not shown slower, which is not shown as fast: the evidence gives the interval
        taken, decision = True, ("E0b succeeds (>90% train acc; converging slower than ETRM is not shown): the plan "
                                 "reads \"ETRMTRM validated\", proceed to E1, E2, E3")
    elif hi < E0B_FAILURE_ACC:
        taken, decision = True, ("E0b fails (<80% train acc): debug the encoder carry reset, gradient flow and "
                                 "encoder variance (`etrmtrm diagnose`)")
    elif lo >= E0B_FAILURE_ACC and hi <= E0B_SUCCESS_ACC:
        taken, decision = True, "neither branch: E0b lies between 80% and 90% train acc, where the plan names no action"
    else:  # the interval reaches a line (touching it is reaching it: a branch needs the whole interval past it)
        edges = " and ".join(pct(line) for line in (E0B_FAILURE_ACC, E0B_SUCCESS_ACC) if lo <= line <= hi)
        taken, decision = False, f"not decided: the 95% interval {pct_interval(lo, hi)} reaches {edges}"
    return Decision("After E0b", taken, decision, evidence)


def convergence(e0b: Configuration, base: Configuration | None, evidence: list[str]) -> bool:
    """Whether E0b is shown to converge slower than a static baseline: the whole paired interval of its steps to
    90% train accuracy lies above the baseline's (the plan's "E0b works but slower than ETRM"; its week-1
    criterion "E0b converges in similar time as E0a"). Appends the difference to `evidence`."""
    if base is None or base is e0b or base.first.encoder != "static":
        return False
    diff, line = paired_figure(base, e0b, "steps_to_90", f"steps to 90%, {e0b.label} - {base.label}", "steps", 1.0)
    evidence.append(line or f"steps to 90%: no seed in which both {base.label} and {e0b.label} reached 90%")
    # A seed in which the baseline never reached 90% and E0b did is a seed where E0b was faster: left out of the
    # difference, it would leave "slower" standing on the other seeds alone
    slower = diff is not None and diff.interval is not None and diff.interval[0] > 0
    faster = [s for s in never_reached(base, "steps_to_90") if s in points(e0b, "steps_to_90", 1.0)]
    if slower and faster:
        evidence.append(f"not shown slower: {base.label} never reached 90% in seed(s) {faster}, where "
                        f"{e0b.label} did, faster there than the difference above can count")
    return slower and not faster


@dataclass(frozen=True)
class Gains:
    """The paired train-accuracy gains of k configurations over one baseline, each interval at level
    1 - 0.05 / k (Bonferroni: 95 % for the family, so k chances do not inflate a false "gain")."""

    evidence: list[str]
    intervals: dict[str, tuple[float, float] | None]  # label -> interval of run - base, points; None: none
    missing: str  # why an interval is None ("" when none is)
    waiting: list[str]  # the family's configurations with no finished run yet

    def at_or_above(self, line: float) -> list[str]:
        """The configurations whose whole interval lies at or above `line`."""
        return [label for label, i in self.intervals.items() if i and i[0] >= line]

    def all_inside(self, lo: float, hi: float) -> bool:
        """Every configuration's interval lies inside (lo, hi), and none is waiting for a finished run."""
        return not self.waiting and all(i and lo < i[0] and i[1] < hi for i in self.intervals.values())

    def undecided(self, *lines: float) -> str:
        """Why no branch is taken: a missing interval, one that reaches across one of `lines`, runs waiting."""
        reasons = [self.missing] if self.missing else []
        across = [line for line in lines if any(i and i[0] <= line <= i[1] for i in self.intervals.values())]
        if across and not self.missing:
            *others, last = [f"{line:+g}" for line in across]
            reasons.append(f"an interval reaches across {', '.join(others)}{' and ' if others else ''}{last} points")
        if self.waiting:
            reasons.append("no finished run yet of " + ", ".join(self.waiting))
        return "; ".join(reasons)


def gains(runs: Sequence[Configuration], base: Configuration, waiting: Sequence[Configuration] = ()) -> Gains:
    """`waiting`: configurations of the same family with no finished run yet: they count in the family's size,
    and while there are any, nothing can be said of every configuration (one of them may differ)."""
    k = len(runs) + len(waiting)  # the whole family: those still running will count too
    family = 1 - 0.05 / k
    diffs: list[Estimate | None] = []
    for run in runs:
        try:
            diffs.append(paired_difference(points(base, "train_acc"), points(run, "train_acc"), level=family))
        except NoSharedSeed:  # no seed in common
            diffs.append(None)
    evidence = [line for run, d in zip(runs, diffs, strict=True)
                for line in ([f"{run.label} - {base.label}: {describe(d)}", *unpaired(base, run, d)] if d else
                             [f"{run.label} - {base.label}: no seed in common"])]
    if k > 1:
        evidence.append(f"{k} comparisons: each interval at {100 * family:g}% (Bonferroni), 95% for all")
    evidence += unfinished(base, *runs, *waiting)
    no_seed = [run.label for run, d in zip(runs, diffs, strict=True) if d is None]
    missing = (f"no seed in common with the baseline: {', '.join(no_seed)}" if no_seed
               else next((no_interval(d) for d in diffs if d and d.interval is None), ""))
    return Gains(evidence, {run.label: d.interval if d else None for run, d in zip(runs, diffs, strict=True)},
                 missing, [c.label for c in waiting])


def after_week_1(e0b: Configuration, base: Configuration) -> Decision:
    """"Recurrence shows improvement" when E0b gains at least +NO_GAIN_PTS over the static baseline by its whole
    interval, "no improvement" when its interval lies below that line."""
    shown, point = gains([e0b], base), "After Week 1"
    difference = shown.evidence[0]  # "E0b - E0a: -0.24 points, 95% CI [-1.02, +0.54], n = 5": in the headline too
    if shown.at_or_above(NO_GAIN_PTS):
        return Decision(point, True, "recurrence shows improvement: proceed with E1-E4, consider Variant B "
                        f"(at least +{NO_GAIN_PTS:g} points; {difference})", shown.evidence)
    if shown.all_inside(-math.inf, NO_GAIN_PTS):
        return Decision(point, True, "recurrence shows no improvement: may not be worth the added complexity "
                        f"(the interval lies below +{NO_GAIN_PTS:g} points; {difference})", shown.evidence)
    return Decision(point, False, f"not decided: {shown.undecided(NO_GAIN_PTS)} ({difference})", shown.evidence)


def after_week_2(variants: Sequence[Configuration], base: Configuration, waiting: Sequence[Configuration]
                 ) -> Decision:
    """"A configuration significantly better than ETRM" when one gains at least +SIGNIFICANT_GAIN_PTS (the plan's
    scenario A) by its whole interval; "all similar to ETRM" when every interval lies inside scenario C's band;
    neither branch when no interval reaches +SIGNIFICANT_GAIN_PTS and one lies outside that band (a slight gain
    or a loss, for which the plan names no action at this point)."""
    shown, point = gains(variants, base, waiting), "After Week 2"
    if better := shown.at_or_above(SIGNIFICANT_GAIN_PTS):
        return Decision(point, True, "a configuration significantly better than ETRM: document it, proceed to the "
                        f"full dataset ({', '.join(better)}: at least +{SIGNIFICANT_GAIN_PTS:g} points, the plan's "
                        "scenario A)", shown.evidence)
    if shown.all_inside(-SAME_BAND_PTS, SAME_BAND_PTS):
        return Decision(point, True, "every ETRMTRM configuration similar to ETRM: recurrence may not matter here; "
                        f"document the null result (every interval inside ±{SAME_BAND_PTS:g} points, the plan's "
                        "scenario C)", shown.evidence)
    outside = [label for label, i in shown.intervals.items() if i and (i[0] >= SAME_BAND_PTS or i[1] <= -SAME_BAND_PTS)]
    if shown.all_inside(-math.inf, SIGNIFICANT_GAIN_PTS) and outside:
        return Decision(point, True, f"neither branch: no configuration significantly better than ETRM (every "
                        f"interval below +{SIGNIFICANT_GAIN_PTS:g} points) and not all similar to it "
                        f"({', '.join(outside)}: outside ±{SAME_BAND_PTS:g} points), where the plan names no action",
                        shown.evidence)
    why = shown.undecided(SIGNIFICANT_GAIN_PTS, -SAME_BAND_PTS, SAME_BAND_PTS)
    return Decision(point, False, f"not decided: {why}", shown.evidence)


def decision_points(configs: Sequence[Configuration], base: Configuration | None) -> list[Decision]:
    """The plan's decision points that the compared runs reach: After E0b (E0b compared), After Week 1 (E0b and
    a static baseline), After Week 2 (the week-2 variants of E0b, against the static baseline)."""
    if several := ambiguous(configs, "E0b"):  # After E0b and After Week 1 judge E0b: not drawn
        e0b, out = None, [Decision("After E0b", False, f"not decided: E0b's runs are of {len(several)} "
                                   f"configurations ({', '.join(several)}), and the runs cannot tell which is E0b", [])]
    else:  # the one with finished seeds before one with none yet
        e0b = min((c for c in configs if "E0b" in c.exp_ids), key=lambda c: not c.n, default=None)
        out = [after_e0b(e0b, base)] if e0b is not None and e0b.estimate("train_acc").mean is not None else []
    if base is None or base.first.encoder != "static" or not points(base, "train_acc"):
        return out
    if e0b is not None and e0b is not base and points(e0b, "train_acc"):
        out.append(after_week_1(e0b, base))
    week_2 = [c for c in configs if WEEK_2 & set(c.exp_ids) and "E0b" not in c.exp_ids]
    variants = [c for c in week_2 if points(c, "train_acc")]
    waiting = [c for c in week_2 if c.pending and not points(c, "train_acc")]
    if variants:
        out.append(after_week_2(variants, base, waiting))
    return out


def verdict(rows: Sequence[RunRow], configs: Sequence[Configuration],
            differences: Mapping[str, Sequence[object]] | None = None) -> Verdict:
    base, why = pick_baseline(configs)
    scenarios = []
    if base is not None and base.first.encoder == "static":
        judged = [c for c in configs if c.first.recurrent and c is not base and points(c, "train_acc")]
        for c in judged:
            also = [s for s in settings_between(configs, differences or {}, base, c)
                    if not s.startswith(f"{ENCODER_TYPE}:")]
            found = scenario(c, base, family=len(judged), also_differs=also)
            if found is not None:
                scenarios.append(found)
    return Verdict(base.label if base else None, why, scenarios, red_flags(rows, configs, base),
                   best_configuration(configs, base), parent_comparisons(configs, differences or {}),
                   decision_points(configs, base), parents_absent(configs))
