"""Run a named experiment and write its results table into its README.

    python experiments/record.py recsys2021_wnd                 # run, then update the README
    python experiments/record.py criteo_deepfm --set criteo=/path/to/train.txt
    python experiments/record.py recsys2021_wnd --dry-run       # print the commands only

`experiments/<name>/experiment.yaml` holds the exact commands (`steps`), with `{variable}`
placeholders filled from `variables` (and `--set name=value`). A step with `run: <dir>` is a
training run whose `result.json` and `metrics.jsonl` become a row of the results table; a
step with `sweep: <dir>` is a multirun whose jobs become rows (`python -m recsys.report`).
The table replaces the text between the `<!-- results -->` markers of the README, with the
date, the git SHA and the variables used, so every number in the README was printed by the
commands above it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results -->", "<!-- /results -->"


def load(name: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    path = REPO / "experiments" / name / "experiment.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in (REPO / "experiments").glob("*/experiment.yaml"))
        sys.exit(f"error: no experiment {name!r} (known: {', '.join(known)})")
    spec = yaml.safe_load(path.read_text())
    variables = {k: str(v) for k, v in (spec.get("variables") or {}).items()}
    variables.setdefault("out", f"outputs/experiments/{name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in variables:
            sys.exit(f"error: --set {item!r}: expected name=value with name in {sorted(variables)}")
        variables[key] = value
    return spec, variables


def run_steps(spec: dict[str, Any], variables: dict[str, str], dry_run: bool) -> list[dict]:
    done = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for step in spec["steps"]:
        command = step["cmd"].format(**variables)
        print(f"$ {command}", flush=True)
        record = {**step, "cmd": command, "seconds": None}
        if not dry_run:
            t = time.perf_counter()
            argv = shlex.split(command)
            if argv[0] == "python":
                argv[0] = sys.executable
            proc = subprocess.run(argv, cwd=REPO, env=env)
            if proc.returncode != 0:
                sys.exit(f"error: step {step.get('name', command)!r} exited {proc.returncode}")
            record["seconds"] = round(time.perf_counter() - t, 1)
        done.append(record)
    return done


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return "" if value is None else str(value)


def run_row(run_dir: Path, label: str, seconds: float | None) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = history[-1] if history else {}
    row: dict[str, Any] = {
        "run": label,
        "epochs": len(history),
        "best": f"{result['metric']} {_fmt(result['best'])} (epoch {result['best_epoch']})",
    }
    row.update({k: v for k, v in result.get("test", {}).items()})
    row["samples/s"] = last.get("train/samples_per_s")
    row["step seconds"] = None if seconds is None else f"{seconds:.0f}"
    return row


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from recsys.report import report

    _, rows = report(sweep_dir)
    keep = ("job", "overrides", "status", "best", "epochs")
    out = []
    for row in rows:
        out.append(
            {
                **{k: row.get(k) for k in keep},
                **{k: v for k, v in row.items() if k.startswith("test/")},
            }
        )
    return out


def results_table(steps: list[dict], variables: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for step in steps:
        if "run" in step:
            run_dir = REPO / step["run"].format(**variables)
            rows.append(run_row(run_dir, step.get("name", run_dir.name), step["seconds"]))
        if "sweep" in step:
            rows.extend(sweep_rows(REPO / step["sweep"].format(**variables)))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def git_sha() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True)
    return proc.stdout.decode().strip() or "unknown"


def write_readme(name: str, steps: list[dict], table: str, variables: dict[str, str]) -> Path:
    readme = REPO / "experiments" / name / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"error: {readme} lacks the {BEGIN} ... {END} markers")
    took = ", ".join(f"{s.get('name', '?')} {s['seconds']:.0f} s" for s in steps)
    block = "\n".join(
        [
            BEGIN,
            f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at git {git_sha()} by "
            f"`python experiments/record.py {name}` (variables: "
            + ", ".join(f"{k}={v}" for k, v in variables.items())
            + f"). Step times: {took}.",
            "",
            table,
            END,
        ]
    )
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(head + block + tail)
    tmp.replace(readme)
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a directory under experiments/ with an experiment.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--no-write", action="store_true", help="print the table, keep README")
    args = parser.parse_args(argv)
    spec, variables = load(args.name, args.set)
    steps = run_steps(spec, variables, args.dry_run)
    if args.dry_run:
        return
    table = markdown(results_table(steps, variables))
    print(table)
    if not args.no_write:
        print(f"wrote {write_readme(args.name, steps, table, variables)}")


if __name__ == "__main__":
    main()
