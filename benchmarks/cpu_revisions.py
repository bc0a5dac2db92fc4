"""The cpu section's training step timed under two (or more) revisions of ablate, back to back.

A speed-up claimed against an earlier README table is only a measurement when the earlier code
runs on the same machine in the same minutes. This script checks out each revision into a git
worktree (``.cache/revisions/SHA``), and times the default sweep's variants there with the cpu
section of *this* tree's ``benchmarks/bench.py`` (so the timing loop is the same for every
revision), alternating the revisions round by round so a drifting machine slows them alike:

    python -m benchmarks.cpu_revisions 8c88248 HEAD            # before issue 17's CPU work, and now
    python -m benchmarks.cpu_revisions 8c88248 HEAD --rounds 3 --steps 10 --out benchmarks/RESULTS.md
    python -m benchmarks.cpu_revisions 8c88248 WORKTREE   # this checkout's working tree, uncommitted

Each revision's ablate is imported from its worktree (checked: the worker prints where it came
from). The sweep file is this tree's; keys an older revision does not know and that do not change
the model or its step (``scope``, a variant's own ``recipe``) are dropped for it, and the parameter
counts of both revisions are printed so a changed model would show. Rows are appended to the
results file with the command, like every bench section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"
WORKTREE = "WORKTREE"  # the name of this checkout's working tree among the revisions

# run inside the revision's worktree: its ablate, this tree's timing loop
WORKER = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import ablate
assert ablate.__file__.startswith(sys.argv[1]), ablate.__file__
spec = importlib.util.spec_from_file_location("bench_here", sys.argv[2])
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
rows = []
bench.bench_cpu(rows, cpu_sweep=sys.argv[3], cpu_steps=int(sys.argv[4]), cpu_warmup=int(sys.argv[5]), cpu_rounds=1)
print("ROWS " + json.dumps(rows))
"""


def worktree(rev: str) -> tuple[str, Path]:
    if rev == WORKTREE:  # this checkout as it is, uncommitted changes included
        return WORKTREE, ROOT
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = ROOT / ".cache" / "revisions" / sha[:12]
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), sha],
            check=True,
            capture_output=True,
        )
    return sha, path


def sweep_for_old_code(sweep: Path, tmp: Path) -> Path:
    """The sweep without the keys that leave the model and its step unchanged (older code rejects them)."""
    data = yaml.safe_load(sweep.read_text())
    data.pop("scope", None)
    for entry in data.get("variants", []):
        if isinstance(entry, dict):
            entry.pop("recipe", None)
    out = tmp / sweep.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def time_revision(path: Path, sweep: Path, steps: int, warmup: int) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), str(BENCH), str(sweep), str(steps), str(warmup)],
        cwd=path,
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROWS ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{path}: the cpu timing failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("ROWS "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revisions", nargs="+", help="git revisions to time (e.g. 8c88248 HEAD), or WORKTREE")
    p.add_argument("--sweep", default="sweeps/default.yaml", help="the sweep whose variants are timed")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each times every revision once, in turn")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant and round first")
    p.add_argument("--out", default=None, help="results file to append the rows to (e.g. benchmarks/RESULTS.md)")
    args = p.parse_args(argv)

    trees = [worktree(rev) for rev in args.revisions]
    with tempfile.TemporaryDirectory() as tmp:
        stripped = sweep_for_old_code(ROOT / args.sweep, Path(tmp))
        times: dict[tuple[str, str], list[float]] = {}  # tokens/s of each round
        params: dict[tuple[str, str], float] = {}
        for r in range(args.rounds):
            for (sha, path), rev in zip(trees, args.revisions, strict=True):
                for row in time_revision(path, stripped, args.steps, args.warmup):
                    times.setdefault((rev, row["impl"]), []).append(row["tokens_per_s"])
                    params[(rev, row["impl"])] = row["params_M"]
                    case = row["case"]
                print(f"round {r + 1}/{args.rounds}: {rev} ({sha[:7]}) timed", flush=True)
    first, last = args.revisions[0], args.revisions[-1]
    variants = list(dict.fromkeys(v for _, v in times))
    rows = []
    print(f"\n{case}; tokens/s: median over {args.rounds} rounds of each round's (from its median step time)")
    print(f"{'variant':<14}" + "".join(f"{rev + ' tok/s':>18}" for rev in args.revisions) + f"{'ratio':>8}  params (M)")
    for variant in variants:
        speed = {rev: statistics.median(times[(rev, variant)]) for rev in args.revisions}
        ratio = speed[last] / speed[first]
        counts = sorted({round(params[(rev, variant)], 4) for rev in args.revisions})
        print(
            f"{variant:<14}"
            + "".join(f"{speed[rev]:>18,.0f}" for rev in args.revisions)
            + f"{ratio:>7.2f}x  "
            + ", ".join(map(str, counts))
        )
        for (sha, _), rev in zip(trees, args.revisions, strict=True):
            rows.append(
                {
                    "section": "cpu_revisions",
                    "case": case,
                    "impl": variant,
                    "revision": sha[:12],
                    "params_M": params[(rev, variant)],
                    "tokens_per_s": speed[rev],
                    f"vs_{first}": speed[rev] / speed[first],
                }
            )
    if args.out:
        sys.path.insert(0, str(ROOT))
        from benchmarks.bench import write_results

        write_results(rows, Path(args.out), "python -m benchmarks.cpu_revisions " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
