"""The demo's figures for issue 16, one JSON line each: the ranker's and the logistic
baseline's test AUC and gap closed at each row count, and (where the later stages ran) the
served path's Recall@50 next to each stage and baseline.

    python experiments/demo_figures/run.py                         # 100,000 and 1,000,000 rows
    python experiments/demo_figures/run.py --rows 100000 --work /tmp/figures
    python experiments/demo_figures/run.py --read-only --work /tmp/figures   # no new runs

Each row count runs `python -m recsys.pipeline pipeline.rows=<n>` in its own work
directory `<work>/<n>` (resume=true: a finished stage with the same settings is reused).
Up to `--full-rows` rows it runs every stage but serve; above, only generate, features and
train (the AUC figures; export and evaluate at 1M take long and add no AUC figure).
The figures are read from the stage markers the pipeline writes (`<work>/<n>/_stages/`), the
same records its console lines and report come from. Extra arguments after `--` go to every
pipeline run, e.g. `-- model=deepfm`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from recsys.run_report import gap_share  # the pipeline's own definition

REPO = Path(__file__).resolve().parents[2]
ALL_STAGES = "[generate,features,train,export,evaluate]"
AUC_STAGES = "[generate,features,train]"


def _record(work: Path, name: str) -> dict[str, Any] | None:
    marker = work / "_stages" / f"{name}.json"
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())["record"]


def figures(work: Path, rows: int, k: int = 50) -> list[dict[str, Any]]:
    """The figures held by the stage markers of one pipeline work directory."""
    out: list[dict[str, Any]] = []
    generate = _record(work, "generate")
    best = generate["details"]["summary"]["best_auc"].get("test") if generate else None
    if best is not None:
        out.append({"figure": "best_achievable_test_auc", "rows": rows, "value": best})
    for role in ("ranker", "baseline"):
        record = _record(work, f"train_{role}")
        if record is None:
            continue
        details = record["details"]
        auc = details["result"].get("test", {}).get("test/auc", math.nan)
        common = {"rows": rows, "role": role, "model": details["model"]}
        out.append({"figure": "test_auc", **common, "value": round(auc, 4)})
        share = gap_share(auc, best)
        if not math.isnan(share):
            out.append({"figure": "gap_closed", **common, "value": round(share, 4)})
    evaluate = _record(work, "evaluate")
    if evaluate is not None:
        report = evaluate["details"]["report"]
        for method, values in report["metrics"].items():
            for name, value in values.items():
                if name == f"recall@{k}":
                    out.append(
                        {
                            "figure": name,
                            "rows": rows,
                            "method": method,
                            "users": report["users"],
                            "value": round(value, 4),
                        }
                    )
    return out


def run_pipeline(work: Path, rows: int, stages: str, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "recsys.pipeline",
        f"pipeline.rows={rows}",
        f"pipeline.work_dir={work}",
        f"pipeline.stages={stages}",
        f"hydra.run.dir={work}/_pipeline_run",
        *extra,
    ]
    print("# " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    # the pipeline's own lines go to stderr, so stdout holds only the JSON figures
    done = subprocess.run(cmd, cwd=REPO, stdout=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"the pipeline failed at {rows:,} rows (exit {done.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "demo_figures")
    parser.add_argument(
        "--full-rows", type=int, default=100_000, help="up to this many rows run every stage"
    )
    parser.add_argument("--read-only", action="store_true", help="only read earlier runs")
    parser.add_argument("extra", nargs="*", help="pipeline overrides (after --)")
    args = parser.parse_args()
    for rows in args.rows:
        work = args.work / str(rows)
        if not args.read_only:
            stages = ALL_STAGES if rows <= args.full_rows else AUC_STAGES
            run_pipeline(work, rows, stages, args.extra)
        for figure in figures(work, rows):
            print(json.dumps(figure), flush=True)


if __name__ == "__main__":
    main()
