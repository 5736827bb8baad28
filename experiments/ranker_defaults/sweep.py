"""Train one ranker per configuration line and print each run's validation curve.

    python experiments/ranker_defaults/sweep.py --data /tmp/q/wnd --out /tmp/q/runs configs.txt

Each non-empty line of the configs file is `<name> <override> <override> ...` (Hydra
overrides for `python -m recsys.train`; `backend=local backend.cpus_per_worker=1` is added).
A run whose directory already holds `result.json` is not run again. Prints one JSON line per
run: name, overrides, the best validation AUC and its epoch, the validation AUC of every
epoch, seconds; test metrics are left out on purpose (defaults are chosen on validation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(name: str, overrides: list[str], data: str, out: Path) -> dict:
    run_dir = out / name
    seconds = 0.0
    if not (run_dir / "result.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "recsys.train",
            "backend=local",
            # one torch thread: on a machine shared with other jobs two threads spin-wait
            # on each other and a run takes several times longer
            "backend.cpus_per_worker=1",
            f"data={data}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            return {"name": name, "overrides": overrides, "error": done.stderr[-800:]}
    result = json.loads((run_dir / "result.json").read_text())
    curve = [
        round(json.loads(line)["val/auc"], 4)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "name": name,
        "overrides": overrides,
        "best_val_auc": round(result["best"], 4),
        "best_epoch": result["best_epoch"],
        "val_auc": curve,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for line in args.configs.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *overrides = line.split()
        print(json.dumps(run(name, overrides, args.data, args.out)), flush=True)


if __name__ == "__main__":
    main()
