"""Run the peer benchmarks and regenerate benchmarks/RESULTS.md.

Every measurement runs in its own subprocess with a fixed thread count (set in
the environment before numpy/torch load): app_extension, py4DSTEM and the FFT
floor in this interpreter's environment (/work/venv), PtyRAD in its own
(/work/venv-ptyrad, numpy 2; see setup_ptyrad_venv.sh). For each setting the
codes run one after the other (alternating, the order rotated per repeat), so
a change of machine load hits them alike. Each worker records
``os.getloadavg()`` after every iteration; RESULTS.md shows it next to each
number.

Examples::

    python benchmarks/run.py --all                      # everything, then RESULTS.md
    python benchmarks/run.py --code app --slices 10 --threads 2 --iterations 4
    python benchmarks/run.py --code ptyrad floor --slices 5 10
    python benchmarks/run.py --accuracy --slices 5      # app_extension time-to-tilt
    python benchmarks/run.py --profile --slices 10      # torch.profiler breakdown
    python benchmarks/run.py --report                   # only rewrite RESULTS.md

Records are appended to benchmarks/results/records.jsonl; RESULTS.md uses, for
each (code, kind, slices, threads), the records of the latest invocation that
measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECORDS = RESULTS / "records.jsonl"
WORKERS = {
    "app": "bench_app.py",
    "ptyrad": "bench_ptyrad.py",
    "py4dstem": "bench_py4dstem.py",
    "floor": "bench_floor.py",
}
PREFIX = "BENCH_RESULT "
#: the shared data: next to the repository (a clone in /work/main) or /work/shared (a worktree elsewhere)
SHARED = next(
    (p for p in (HERE.parents[1] / "shared", Path("/work/shared")) if (p / "data").is_dir()),
    Path("/work/shared"),
)
DEFAULT_PTYRAD_PYTHON = "/work/venv-ptyrad/bin/python"


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def git_state() -> dict:
    repo = HERE.parent

    def git(*a):
        try:
            return subprocess.run(
                ["git", *a], cwd=repo, capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "app_extension_dirty": bool(git("status", "--porcelain", "--", "app_extension")),
    }


def run_worker(code: str, args, slices: int, threads: int, session: str, extra: list[str]) -> dict | None:
    python = args.ptyrad_python if code == "ptyrad" else sys.executable
    cmd = [
        python,
        str(HERE / WORKERS[code]),
        "--slices",
        str(slices),
        "--threads",
        str(threads),
        "--iterations",
        str(args.iterations),
        "--batch-size",
        str(args.batch_size),
        "--probe-modes",
        str(args.probe_modes),
        "--data",
        args.data,
        *extra,
    ]
    label = f"{code:<9} S={slices:<3} threads={threads} {' '.join(extra)}"
    print(f"[{time.strftime('%H:%M:%S')}] {label} load={os.getloadavg()[0]:.2f} ...", flush=True)
    git = git_state()  # before the run: the code the worker imports
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, cwd=HERE)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        print(f"    FAILED (exit {proc.returncode}) after {wall:.0f} s:\n{proc.stderr[-3000:]}", flush=True)
        return None
    rec = json.loads(lines[-1][len(PREFIX) :])
    rec["session"] = session
    rec["wall_seconds"] = wall
    rec["command"] = " ".join(["OMP_NUM_THREADS=" + str(threads), *cmd])
    rec["git"] = git
    if code == "profile":
        rec["profile_text"] = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(PREFIX))
    RESULTS.mkdir(exist_ok=True)
    with RECORDS.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    secs = rec.get("iter_seconds") or []
    msg = f"    done in {wall:.0f} s; iterations: " + ", ".join(f"{s:.2f}" for s in secs[:12])
    if rec.get("converged_iteration"):
        msg += f"; converged at iteration {rec['converged_iteration']} ({rec['converged_seconds']:.0f} s)"
    print(msg, flush=True)
    return rec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="speed of all codes + floor, app accuracy, profile")
    p.add_argument("--code", nargs="+", choices=list(WORKERS), default=None)
    p.add_argument("--slices", nargs="+", type=int, default=[5, 10])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    p.add_argument("--iterations", type=int, default=4, help="timed iterations per run (first excluded)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds per setting")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--probe-modes", type=int, default=1)
    p.add_argument("--accuracy", action="store_true", help="app_extension time-to-tilt runs")
    p.add_argument("--max-iterations", type=int, default=40)
    p.add_argument("--profile", action="store_true", help="torch.profiler breakdown of one app iteration")
    p.add_argument("--report", action="store_true", help="only regenerate RESULTS.md")
    p.add_argument("--data", default=str(SHARED / "data" / "sto_tilt_8_-3.h5"))
    p.add_argument("--ptyrad-python", default=DEFAULT_PTYRAD_PYTHON)
    args = p.parse_args(argv)

    session = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    codes = args.code or (list(WORKERS) if args.all else [])
    if args.report and not (codes or args.accuracy or args.profile):
        codes = []
    for slices in args.slices:
        for threads in args.threads:
            for r in range(args.repeats):
                k = r % max(len(codes), 1)
                for code in codes[k:] + codes[:k]:
                    run_worker(code, args, slices, threads, session, [])
    if args.accuracy or args.all:
        for slices in args.slices:
            run_worker(
                "app",
                args,
                slices,
                args.threads[0],
                session,
                ["--accuracy", "--max-iterations", str(args.max_iterations)],
            )
    if args.profile or args.all:
        WORKERS["profile"] = "profile_app.py"
        for slices in sorted(set(args.slices), reverse=True)[:1]:
            run_worker("profile", args, slices, args.threads[0], session, [])
    from report import write_report

    path = write_report(RECORDS, HERE / "RESULTS.md")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
