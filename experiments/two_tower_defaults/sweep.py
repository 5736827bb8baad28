"""Two-tower settings scored on validation: preprocess a feature variant, train, export, and
print the export's validation Recall@50 (the user's train items excluded) with and without
the popularity prior.

    python experiments/two_tower_defaults/sweep.py experiments/two_tower_defaults/configs/100k.txt \
        --raw data/ttd/raw_iid --out outputs/ttd --ranker-run data/demo/runs/ranker

Each line of the config file is `name | features | preprocess overrides | train overrides`
(overrides separated by spaces, `-` for none); `features` names the feature variant, built
once from the first line that names it. Lines starting with `#` are skipped. Every run
appends one JSON line to `<out>/results.jsonl`:
- `valid_beta0`: validation Recall@50 of the two-tower alone (prior weight 0);
- `valid_served`: at the prior weight the export chose on validation (what serving uses);
- `values`: every prior weight tried; `train`: the training run's best epoch line.
The test split is never read here: `recsys.evaluate` on the chosen bundle does that once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

PYTHON = sys.executable
TRAIN = [
    # the pipeline's retrieval training (conf/pipeline.yaml's train_retrieval overrides
    # before this experiment), so that every line differs from it only by its own overrides
    "model=two_tower",
    "backend=ray",
    "seed=0",
    "precision=fp32",
    "model.tower_units=[256,64]",
    "trainer.lr=0.003",
    "trainer.batch_size=1024",
    "trainer.epochs=4",
    "trainer.lr_schedule=none",
]


def run(command: list[str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--raw", type=Path, required=True, help="raw data with a valid/ part")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ranker-run", type=Path, required=True, help="any ranker run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    built: set[str] = set()
    for line in args.config.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, features, pre, train = (part.strip() for part in line.split("|"))
        data = args.out / "features" / features
        if features not in built and not (data / "feature_spec.json").is_file():
            run(
                [PYTHON, "-m", "recsys.preprocess", "features=recsys2021_two_tower",
                 "dataset=recsys2021", f"data={args.raw}", f"out={data}", "overwrite=true",
                 "seed=0", "spark.log_level=ERROR", f"hydra.run.dir={args.out}/logs/{features}",
                 *([] if pre == "-" else shlex.split(pre))],
                args.out / f"preprocess_{features}.log",
            )  # fmt: skip
        built.add(features)
        run_dir, bundle = args.out / "runs" / name, args.out / "bundles" / name
        run(
            [PYTHON, "-m", "recsys.train", *TRAIN, f"data={data}", f"hydra.run.dir={run_dir}",
             *([] if train == "-" else shlex.split(train))],
            args.out / f"train_{name}.log",
        )  # fmt: skip
        run(
            [PYTHON, "-m", "recsys.export", f"ranker_run={args.ranker_run}",
             f"retrieval_run={run_dir}", f"out={bundle}", "overwrite=true",
             f"hydra.run.dir={args.out}/logs/export_{name}"],
            args.out / f"export_{name}.log",
        )  # fmt: skip
        prior = json.loads((bundle / "manifest.json").read_text())["retrieval_prior"]
        values = {str(k): v for k, v in prior["values"].items()}
        best = [
            line.strip()
            for line in (args.out / f"train_{name}.log").read_text().splitlines()
            if line.startswith("best ")
        ]
        row = {
            "name": name,
            "features": features,
            "preprocess": pre,
            "train": train,
            "valid_beta0": values["0"],
            "beta": prior["beta"],
            "valid_served": max(values.values()),
            "values": values,
            "best_epoch": best,
        }
        print(json.dumps(row), flush=True)
        with (args.out / "results.jsonl").open("a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
