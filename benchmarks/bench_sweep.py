"""A sweep's wall time with one job at a time against several at once, on this machine, back to back.

    python benchmarks/bench_sweep.py --max-steps 60            # week1 x 2 seeds, cpu profile, --jobs 1 then 2

Each round runs the real command, `etrmtrm sweep week1 --seeds 2 --profile cpu --set decoder=none --max-steps N
--executor local --jobs J`, into a fresh runs directory, and times it end to end (job processes, their start-up,
training, evals, checkpoints). decoder=none: the runs do not wait for P0. With --jobs J each job trains on
cores // J threads. Throughput = optimizer steps of all runs / wall time; the ratio compares it with the first
round. The load average before each round says whether anything else was running. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_round(target: str, seeds: int, profile: str, steps: int, jobs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        runs = Path(tmp) / "runs"
        cmd = [sys.executable, "-m", "etrmtrm_cli", "sweep", target, "--seeds", str(seeds), "--profile", profile,
               "--set", "decoder=none", "--max-steps", str(steps), "--executor", "local", "--jobs", str(jobs),
               "--experiments", str(REPO / "experiments.toml"), "--runs-dir", str(runs)]
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "COLUMNS": "200"})
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"--jobs {jobs}: the sweep failed:\n{done.stdout}")
        summaries = [json.loads(p.read_text()) for p in sorted(runs.glob("*/seed-*/summary.json"))]
        total = sum(s["step"] for s in summaries)
        training = sum(s["wall_time_s"] for s in summaries)
        return {"jobs": jobs, "runs": len(summaries), "steps": total, "wall_s": round(wall, 1),
                "steps_per_s": round(total / wall, 3), "train_s_per_run": round(training / len(summaries), 1),
                "s_per_step_in_run": round(training / total, 3), "load_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="week1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--jobs", default="1,2", help="the rounds, in order: comma-separated job counts")
    args = parser.parse_args()
    rounds = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        result = sweep_round(args.target, args.seeds, args.profile, args.max_steps, jobs)
        rounds.append(result)
        print(f"--jobs {jobs}: {result['runs']} runs x {args.max_steps} steps in {result['wall_s']:.0f} s "
              f"({result['steps_per_s']:.3f} steps/s; in-run {result['s_per_step_in_run']:.3f} s/step, "
              f"{result['train_s_per_run']:.0f} s of training per run; load before {result['load_before']})",
              flush=True)
    base = rounds[0]["steps_per_s"]
    for result in rounds[1:]:
        print(f"throughput --jobs {result['jobs']} / --jobs {rounds[0]['jobs']}: "
              f"{result['steps_per_s'] / base:.2f}x")  # type: ignore[operator]
    print(json.dumps({"target": args.target, "seeds": args.seeds, "profile": args.profile,
                      "max_steps": args.max_steps, "cores": len(os.sched_getaffinity(0)), "rounds": rounds}))


if __name__ == "__main__":
    main()
