"""MovieLens-100k end to end with the framework's defaults, every model next to its baselines.

    python experiments/movielens100k/run.py --wheel /tmp/ml100k/recbole-1.2.1-py3-none-any.whl
    python experiments/movielens100k/run.py --seeds 0,1,2 --readme   # and record the table

Runs, from the repository root (each step a subprocess: the commands a user would type;
`--dry-run` prints them):

1. `fetch.py` when `<data>/` does not hold the tables yet (it needs `--wheel`);
2. `recsys.preprocess` twice, per-user time split (each user's latest ratings test, the
   latest of the rest valid): the rankers' features and the two-tower's;
3. per seed, `recsys.train` of wide_deep, deepfm, logistic (test AUC on rated rows, label
   rating >= 4) and two_tower (`model=<name>` and nothing else: the framework's defaults);
4. per seed, `recsys.export` (the two-tower and `--ranker`) and `recsys.evaluate` with K=20
   over every test user: Recall@20 of the two-tower, popularity, item-kNN, the ranker's
   order of the candidates and the served blend, each user's train positives excluded.

Then it prints the table (and one JSON line per model and seed) and, with `--readme`,
writes it into experiments/movielens100k/README.md between the results markers. A step
whose output exists is reused (`--fresh` redoes everything).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results -->", "<!-- /results -->"
RANKERS = ("wide_deep", "deepfm", "logistic")
K = 20
SPLIT = "split.method=per_user_time"


def commands(args: argparse.Namespace) -> list[tuple[str, list[str], Path | None]]:
    """(name, argv, output that makes the step reusable) in order."""
    data, out = Path(args.data), Path(args.out)
    rank, tower = out / "features_rank", out / "features_two_tower"
    steps: list[tuple[str, list[str], Path | None]] = []
    if not (data / "interactions.parquet").exists() or args.fresh:
        if not args.wheel:
            sys.exit(f"error: {data} holds no tables yet: pass --wheel <recbole-1.2.1 wheel>")
        fetch = ["python", str(HERE / "fetch.py"), args.wheel, "--out", str(data), "--overwrite"]
        steps.append(("fetch", fetch, None))
    dataset = [
        "dataset=movielens100k",
        f"dataset.path={data}/interactions.parquet",
        f"dataset.users.path={data}/users.parquet",
        f"dataset.items.path={data}/items.parquet",
        SPLIT,
        "overwrite=true",
    ]
    for name, features, target in (
        ("preprocess_rank", "movielens100k", rank),
        ("preprocess_two_tower", "movielens100k_two_tower", tower),
    ):
        argv = ["python", "-m", "recsys.preprocess", f"features={features}", *dataset]
        steps.append((name, [*argv, f"out={target}"], target / "_preprocess.json"))
    for seed in args.seeds:
        runs = out / f"seed{seed}"
        for model in [*args.rankers, "two_tower"]:
            features = tower if model == "two_tower" else rank
            argv = ["python", "-m", "recsys.train", f"model={model}", f"data={features}"]
            argv += [f"seed={seed}", f"hydra.run.dir={runs / model}"]
            steps.append((f"{model} seed {seed}", argv, runs / model / "result.json"))
        bundle = runs / "bundle"
        export = ["python", "-m", "recsys.export", f"ranker_run={runs / args.ranker}"]
        export += [f"retrieval_run={runs / 'two_tower'}", f"out={bundle}", "overwrite=true"]
        export += [f"hydra.run.dir={runs / 'export'}"]
        steps.append((f"export seed {seed}", export, bundle / "manifest.json"))
        evaluate = ["python", "-m", "recsys.evaluate", f"bundle={bundle}", f"data={tower}"]
        evaluate += [f"k=[{K}]", "max_users=null", f"seed={seed}"]
        evaluate += [f"out={runs / 'evaluation.json'}", f"hydra.run.dir={runs / 'evaluate'}"]
        steps.append((f"evaluate seed {seed}", evaluate, runs / "evaluation.json"))
    return steps


def run(steps: list[tuple[str, list[str], Path | None]], args: argparse.Namespace) -> dict:
    seconds: dict[str, float] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, argv, done in steps:
        shown = shlex.join(argv)
        if done is not None and done.exists() and not args.fresh:
            print(f"# reused ({done} exists): {shown}", flush=True)
            continue
        print(f"$ {shown}", flush=True)
        if args.dry_run:
            continue
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env)
        if proc.returncode != 0:
            sys.exit(f"error: step {name!r} exited {proc.returncode}")
        seconds[name] = round(time.perf_counter() - t, 1)
    return seconds


def results(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per (model or baseline, seed) from the runs' result.json and evaluation.json."""
    out = Path(args.out)
    records = []
    for seed in args.seeds:
        runs = out / f"seed{seed}"
        for model in args.rankers:
            result = json.loads((runs / model / "result.json").read_text())
            test = result["test"]
            records.append({
                "model": model, "seed": seed, "test_auc": test.get("test/auc"),
                "test_gauc": test.get("test/gauc"), "test_logloss": test.get("test/logloss"),
                "best_epoch": result["best_epoch"],
                "epochs_run": result["epochs_run"],
            })  # fmt: skip
        tower = json.loads((runs / "two_tower" / "result.json").read_text())
        report = json.loads((runs / "evaluation.json").read_text())
        manifest = json.loads((runs / "bundle" / "manifest.json").read_text())
        # the index adds beta x popularity to the two-tower score (beta chosen on valid)
        beta = (manifest.get("retrieval_prior") or {}).get("beta")
        names = {"retrieval": "two_tower", "popularity": "popularity", "item_knn": "item_knn",
                 "rank": f"two_tower + {args.ranker} order", "blend": "served blend"}  # fmt: skip
        for method, label in names.items():
            metrics = report["metrics"][method]
            record = {
                "model": label, "seed": seed, f"recall@{K}": metrics[f"recall@{K}"],
                f"ndcg@{K}": metrics[f"ndcg@{K}"], "users": report["users"],
            }  # fmt: skip
            if method == "retrieval":
                record.update(best_epoch=tower["best_epoch"], epochs_run=tower["epochs_run"])
                record["prior_beta"] = beta
            if method == "blend":
                record["blend_weight"] = report.get("blend_weight")
            records.append(record)
    return records


def _mean(records: list[dict[str, Any]], model: str, key: str) -> float | None:
    values = [r[key] for r in records if r["model"] == model and r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _cell(records: list[dict[str, Any]], model: str, key: str) -> str:
    values = [r[key] for r in records if r["model"] == model and r.get(key) is not None]
    if not values:
        return ""
    text = f"{statistics.fmean(values):.4f}"
    return text + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def table(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    epochs = {
        m: ", ".join(str(r["best_epoch"]) for r in records if r["model"] == m and "best_epoch" in r)
        for m in models
    }
    lines = [
        f"| model | test AUC | test GAUC | test log loss | Recall@{K} | NDCG@{K} | "
        "best epoch per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        keys = ("test_auc", "test_gauc", "test_logloss", f"recall@{K}", f"ndcg@{K}")
        cells = [_cell(records, m, k) for k in keys]
        lines.append(f"| {m} | {' | '.join(cells)} | {epochs[m]} |")
    return "\n".join(lines)


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """The issue's two targets, said in words."""
    lines = []
    tower, knn = (
        _mean(records, "two_tower", f"recall@{K}"),
        _mean(records, "item_knn", f"recall@{K}"),
    )
    if tower is not None and knn is not None:
        met = "met" if tower >= knn else "NOT met"
        lines.append(f"two-tower Recall@{K} {tower:.4f} vs item-kNN {knn:.4f} (target: >=): {met}")
    betas = sorted({r["prior_beta"] for r in records if r.get("prior_beta") is not None})
    if betas:
        lines.append(
            "the two_tower row ranks by the exported index: two-tower score + beta x item "
            f"popularity, beta {', '.join(map(str, betas))} chosen on valid at export "
            "(beta 0 = the towers alone)"
        )
    logistic = _mean(records, "logistic", "test_auc")
    rankers = {m: _mean(records, m, "test_auc") for m in ("wide_deep", "deepfm")}
    rankers = {m: v for m, v in rankers.items() if v is not None}
    if logistic is not None and rankers:
        best = max(rankers, key=lambda m: rankers[m])
        met = "met" if rankers[best] >= logistic + 0.01 else "NOT met"
        lines.append(
            f"best ranker {best} test AUC {rankers[best]:.4f} vs logistic {logistic:.4f} + 0.01 "
            f"(target: >=; aim 0.80): {met}"
        )
    return lines


def write_readme(text: str) -> None:
    readme = HERE / "README.md"
    content = readme.read_text()
    begin, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    readme.write_text(content[:begin] + "\n" + text + "\n" + content[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="recbole-1.2.1-py3-none-any.whl (for fetch.py)")
    parser.add_argument("--data", default="data/movielens100k", help="fetch.py's tables")
    parser.add_argument("--out", default="outputs/experiments/movielens100k")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--rankers", default=",".join(RANKERS))
    parser.add_argument("--ranker", default="deepfm", help="the ranker exported with two_tower")
    parser.add_argument("--fresh", action="store_true", help="redo steps whose output exists")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.rankers = [r for r in args.rankers.split(",") if r]
    if args.ranker not in args.rankers:
        sys.exit(f"error: --ranker {args.ranker} is not one of --rankers {args.rankers}")
    t0 = time.perf_counter()
    seconds = run(commands(args), args)
    if args.dry_run:
        return
    records = results(args)
    for record in records:
        print(json.dumps(record))
    text = table(records, args)
    said = verdicts(records)
    print(text, *said, sep="\n")
    if args.readme:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "python experiments/movielens100k/run.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) or "all reused"
        header = (
            f"Recorded {when} at git {sha} by `{command}` (seeds {args.seeds}; exported "
            f"ranker {args.ranker}; {time.perf_counter() - t0:.0f} s; steps: {steps})."
        )
        write_readme("\n\n".join([header, text, "\n".join(f"- {s}" for s in said)]))


if __name__ == "__main__":
    main()
