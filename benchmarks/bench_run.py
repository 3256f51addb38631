"""Wall time of a whole `etrmtrm train` run (steps, evals, checkpoints, compile), for one or more source trees
back to back on this machine: this checkout against an older commit, for example.

    git worktree add /tmp/old <commit>
    python benchmarks/bench_run.py E0b --profile cpu --src /tmp/old/src --src src
    python benchmarks/bench_run.py E0b --profile cpu --src src --nproc 1,2   # one process, then torchrun x2

Each run is `python -m etrmtrm_cli train <ID> --profile ... --set decoder=none` (the pretrained decoder does not
change the cost of a step) in a fresh runs directory, with that tree first on PYTHONPATH and its own
experiments.toml (beside its src/, where there is one), so that each tree runs its profile as it defines it (the
cpu profile's dtype, say). Extra arguments
after `--` go to every `train` (e.g. `-- --no-compile --max-steps 500`). Prints each run's wall time, its
median step time (metrics.jsonl), the ratio to the first, and where the time went: the first step (with the
compile, where compiled), the later steps, the evals and the rest (process start, data, checkpoints); the last line
is one JSON object. With `--nproc`,
each tree runs once per process count in the list: N > 1 launches `torchrun --standalone --nproc-per-node N`
(data parallel, gloo on the CPU) with `--threads` = this machine's cores / N for each process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(src: Path, exp_id: str, profile: str, nproc: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        launcher = [sys.executable]
        if nproc > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            extra = ["--threads", str(max(1, (os.cpu_count() or 1) // nproc)), *extra]
        experiments = src.resolve().parent / "experiments.toml"
        own = ["--experiments", str(experiments)] if experiments.is_file() else []
        command = [*launcher, "-m", "etrmtrm_cli", "train", exp_id, "--profile", profile, "--set", "decoder=none",
                   "--runs-dir", runs, "-q", *own, *extra]
        env = {**os.environ, "PYTHONPATH": str(src.resolve())}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{src}: exit {done.returncode}\n{done.stderr[-2000:]}")
        rows = [json.loads(line) for line in (Path(runs) / exp_id / "metrics.jsonl").read_text().splitlines()]
        meta = json.loads((Path(runs) / exp_id / "meta.json").read_text())
        dtype = json.loads((Path(runs) / exp_id / "config.json").read_text())["arch"]["forward_dtype"]
    steps = [r["time/step_s"] for r in rows if "time/step_s" in r]
    evals = sum(r.get("time/eval_s", 0.0) for r in rows)
    return {"src": str(src), "nproc": nproc, "git_sha": meta.get("git_sha"), "runtime": meta.get("runtime"),
            "dtype": dtype, "wall_s": round(wall, 1), "steps": len(steps),
            "step_ms_median": round(1000 * statistics.median(steps), 1),
            # the first step holds the compile of a compiled run; "other": process start, data, checkpoints
            "first_step_s": round(steps[0], 1), "later_steps_s": round(sum(steps[1:]), 1), "evals_s": round(evals, 1),
            "other_s": round(wall - sum(steps) - evals, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--src", type=Path, action="append", required=True, help="a source tree (its src/ dir)")
    parser.add_argument("--nproc", default="1", help="process counts to run each tree with, comma-separated")
    # Everything after `--` goes to `train` (an argparse remainder would swallow it along with the experiment).
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    results = []
    for src, nproc in itertools.product(args.src, [int(n) for n in args.nproc.split(",")]):
        results.append(one_run(src, args.experiment, args.profile, nproc, extra))
        r = results[-1]
        print(f"{r['src']} ({(r['git_sha'] or '?')[:7]}, {r['dtype']}, {nproc} process(es)): {r['wall_s']:.0f} s for "
              f"{r['steps']} steps, median step {r['step_ms_median']} ms, "
              f"{r['wall_s'] / results[0]['wall_s']:.2f}x the first's time; first step {r['first_step_s']} s, "
              f"later steps {r['later_steps_s']} s, evals {r['evals_s']} s, other {r['other_s']} s",
              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
