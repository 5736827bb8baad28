"""`python -m recsys.report <multirun dir>`: one table of a sweep's jobs and their metrics.

Reads each job directory (`<multirun dir>/<job>/`: `.hydra/overrides.yaml`, `metrics.jsonl`,
`result.json`, `error.txt` for a failed job), prints a table, and writes `report.csv` and
`report.png` (the watched validation metric per epoch, one line per job) into the sweep dir.

The `val/` columns are the best epoch's (`result.json`'s `best_epoch`, whose weights the
`test/` columns were measured with), so a row reads as one model; `val_epoch` says which
epoch that is. A job without `result.json` (failed, still running) shows its last epoch's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def read_job(job: Path) -> dict[str, Any]:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides)}
    history = []
    if (job / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    row["epochs"] = len(history)
    if (job / "result.json").is_file():
        result = json.loads((job / "result.json").read_text())
        row["status"] = "ok"
        row["metric"] = result["metric"]
        row["best"] = result["best"]
        row["best_epoch"] = result["best_epoch"]
        row.update(result.get("test", {}))
    elif (job / "error.txt").is_file():
        row["status"] = "failed: " + (job / "error.txt").read_text().strip()[:120]
    else:
        row["status"] = "incomplete"
    shown = _shown_epoch(history, row.get("best_epoch"))
    if shown is not None:
        row["val_epoch"] = shown["epoch"]
        row.update({k: v for k, v in shown.items() if k.startswith("val/")})
    row["_history"] = history
    return row


def _shown_epoch(history: list[dict[str, Any]], best_epoch: int | None) -> dict[str, Any] | None:
    """The epoch whose validation values the table shows: the best one when known (the last
    epoch's values after early stopping are those of weights that were thrown away)."""
    if best_epoch is not None:
        best = [h for h in history if h.get("epoch") == best_epoch]
        if best:
            return best[-1]  # a resumed run may log an epoch twice: the later one counts
    return history[-1] if history else None


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        metric = row.get("metric")
        points = [(h["epoch"], h[metric]) for h in row["_history"] if metric in h]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{row['job']}: {row['overrides']}"[:70])
    ax.set_xlabel("epoch")
    ax.set_ylabel(", ".join(sorted({r["metric"] for r in rows if r.get("metric")})))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(sweep_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    rows = [read_job(job) for job in job_dirs(sweep_dir)]
    if not rows:
        raise SystemExit(f"error: no job directories (with .hydra/) under {sweep_dir}")
    # show what varies between jobs; what all jobs share is noise in the table
    shared = set.intersection(*(set(r["overrides"].split()) for r in rows))
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in shared)
    columns = ["job", "overrides", "status", "epochs", "metric", "best", "best_epoch", "val_epoch"]
    extra = sorted({k for r in rows for k in r if k.startswith(("val/", "test/"))})
    columns += extra
    with (sweep_dir / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, sweep_dir / "report.png")
    return format_table(rows, columns), rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="outputs/train/multiruns/<time>")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir} is not a directory")
    table, _ = report(args.sweep_dir)
    print(table)
    print(f"\nwrote {args.sweep_dir / 'report.csv'} and {args.sweep_dir / 'report.png'}")


if __name__ == "__main__":
    main()
