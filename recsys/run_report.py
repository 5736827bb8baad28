"""The pipeline's run report: `report.md`, `report.html` and training-curve PNGs.

Every number comes from the stage records the console lines were printed from, so the two
agree. Baselines for the ranker are computed here on its processed test split: a constant
predictor (the training label rate) and item popularity (the item's count of positive
training rows). The best achievable AUC comes from the generator's true probabilities.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from recsys.evaluate import recall_headline
from recsys.features.feature_spec import FeatureSpec
from recsys.report_markdown import fmt as _fmt
from recsys.report_markdown import markdown_to_html, table

if TYPE_CHECKING:
    from recsys.pipeline import PipelineState

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ baselines


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (torchmetrics, as training reports it); NaN when one class is absent."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    if labels.min() == labels.max():
        return math.nan
    target = torch.from_numpy(labels.astype(np.int64))
    return float(binary_auroc(torch.from_numpy(scores.astype(np.float64)), target))


def log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def ranker_baselines(data: Path) -> dict[str, dict[str, float]]:
    """Constant and popularity predictors scored on the processed test split."""
    spec = FeatureSpec.load(data)
    if spec.label is None or spec.item_id is None:
        return {}
    columns = [spec.label, spec.item_id]
    train = pq.read_table(data / "train", columns=columns)
    test = pq.read_table(data / "test", columns=columns)
    y_train = train[spec.label].to_numpy().astype(np.float64)
    y_test = test[spec.label].to_numpy().astype(np.float64)
    rate = float(y_train.mean())
    item_train = train[spec.item_id].to_numpy()
    positives = np.bincount(item_train, weights=y_train, minlength=1)
    item_test = test[spec.item_id].to_numpy()
    popularity = np.where(
        item_test < len(positives), positives[np.minimum(item_test, len(positives) - 1)], 0.0
    )
    return {
        "constant": {"auc": 0.5, "logloss": log_loss(y_test, np.full(len(y_test), rate))},
        "popularity": {"auc": auc(y_test, popularity)},
    }


MARGIN = 0.01  # test AUC by which the ranker should beat the logistic baseline (issue 16)


def gap_share(value: float, best: float | None) -> float:
    """The share of the gap between the constant predictor (AUC 0.5) and the best achievable
    AUC (the generator's true probabilities) that `value` closes; NaN when either is unknown."""
    if best is None or math.isnan(value) or math.isnan(best) or best <= 0.5:
        return math.nan
    return (value - 0.5) / (best - 0.5)


def versus_baseline(ranker: float, baseline: float, name: str, margin: float = MARGIN) -> str:
    """The ranker's test AUC against the baseline's, in words."""
    if math.isnan(ranker) or math.isnan(baseline):
        return f"{name} AUC {_fmt(baseline)}"
    diff = ranker - baseline
    if diff >= margin:
        verdict = f"the ranker beats it by {diff:+.4f}"
    elif diff > 0:
        verdict = f"the ranker beats it by only {diff:+.4f}, short of the {margin} aimed at"
    else:
        verdict = f"the ranker does not beat it ({diff:+.4f})"
    return f"{name} AUC {baseline:.4f}: {verdict}"


def _percent(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{share:.1%}"


# ------------------------------------------------------------------ curves


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(history: list[dict[str, Any]], title: str, path: Path) -> bool:
    """Loss (train, val) and the validation metrics per epoch, side by side."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    quality = [k for k in history[-1] if k.startswith("val/") and k != "val/loss"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("train/loss", "val/loss"):
        if key in history[-1]:
            axes[0].plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss")
    axes[0].legend()
    for key in quality:
        axes[1].plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation")
    if quality:
        axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ the report


def best_auc(state: PipelineState) -> float | None:
    """The test AUC of the generator's true probabilities (None: the data was not generated)."""
    generate = state.records.get("generate")
    return generate.details["summary"]["best_auc"].get("test") if generate else None


def baseline_auc(train: Any) -> float:
    """The baseline model's test AUC from the train stage's record (NaN: none trained)."""
    baseline = train.details.get("baseline")
    if baseline is None:
        return math.nan
    return baseline["result"].get("test", {}).get("test/auc", math.nan)


def headline(state: PipelineState) -> list[str]:
    """The key results, printed on the console and written at the top of the report."""
    records, lines = state.records, []
    train = records.get("train")
    if train is not None:
        test = train.details["ranker"]["result"].get("test", {})
        ranker_auc = test.get("test/auc", math.nan)
        best = best_auc(state)
        baselines = state.baselines
        constant = baselines.get("constant", {}).get("logloss", math.nan)
        popularity = baselines.get("popularity", {}).get("auc", math.nan)
        baseline = train.details.get("baseline")
        lines.append(
            f"ranker ({train.details['ranker']['model']}) test AUC {_fmt(ranker_auc)}, "
            f"log loss {_fmt(test.get('test/logloss', math.nan))}"
            + (
                f" | {versus_baseline(ranker_auc, baseline_auc(train), baseline['model'])}"
                if baseline is not None
                else ""
            )
            + f" | constant AUC 0.5000, log loss {_fmt(constant)}"
            f" | popularity AUC {_fmt(popularity)}"
            + (f" | best achievable {best:.4f}" if best is not None else "")
        )
        if best is not None:
            shares = [f"ranker {_percent(gap_share(ranker_auc, best))}"]
            if baseline is not None:
                share = gap_share(baseline_auc(train), best)
                shares.append(f"{baseline['model']} {_percent(share)}")
            lines.append(
                f"gap closed at {state.cfg.pipeline.rows:,} rows, (AUC - 0.5) / "
                f"({best:.4f} - 0.5): {', '.join(shares)}"
            )
    evaluate = records.get("evaluate")
    if evaluate is not None:
        report = evaluate.details["report"]
        k = max(report["k"])
        lines.append(f"Recall@{k} on held-out interactions: {recall_headline(report)}")
    serve = records.get("serve")
    if serve is not None:
        ms = sorted(a["ms"] for a in serve.details["answers"])
        lines.append(
            f"serving: {len(ms)} Recommend calls, median {ms[len(ms) // 2]:.1f} ms, "
            f"max {ms[-1]:.1f} ms"
        )
    return lines


def ranker_table(state: PipelineState, train: Any) -> list[str]:
    """The ranker's test AUC next to every baseline's, with the share of the gap closed."""
    best = best_auc(state)
    rows = []
    for role in ("ranker", "baseline"):
        d = train.details.get(role)
        if d is not None:
            test = d["result"].get("test", {})
            name = d["model"] + (
                " (baseline, same features and loop)" if role == "baseline" else ""
            )
            rows.append([name, test.get("test/auc", math.nan), test.get("test/logloss", math.nan)])
    rows += [
        ["constant (train label rate)", 0.5, state.baselines["constant"]["logloss"]],
        ["popularity (positives per item)", state.baselines["popularity"]["auc"], ""],
        ["true probabilities (generator)", best if best is not None else math.nan, ""],
    ]
    lines = ["### Ranker against baselines (test split)", ""]
    lines += table(
        ["predictor", "AUC", "log loss", "gap closed"],
        [[*row, _percent(gap_share(row[1], best))] for row in rows],
    )
    lines += [
        "",
        "Gap closed: (AUC - 0.5) / (best achievable - 0.5), the share of the way from the "
        "constant predictor to the generator's true probabilities.",
    ]
    if "baseline" in train.details:
        ranker_auc = train.details["ranker"]["result"].get("test", {}).get("test/auc", math.nan)
        verdict = versus_baseline(
            ranker_auc, baseline_auc(train), train.details["baseline"]["model"]
        )
        lines += ["", verdict[0].upper() + verdict[1:] + "."]
    return lines


def write_report(state: PipelineState, total_seconds: float) -> Path:
    """Write report.md, report.html and curve PNGs into the run directory; log the headline."""
    out = state.run_dir
    out.mkdir(parents=True, exist_ok=True)
    records = state.records
    state.baselines = {}
    if "train" in records:
        state.baselines = ranker_baselines(state.path(str(state.cfg.pipeline.ranker_features)))
    top = headline(state)
    for line in top:
        log.info(line)

    md: list[str] = ["# Pipeline report", ""]
    md += [f"- {line}" for line in top]
    command = " ".join(["python -m recsys.pipeline", *state.user_overrides])
    md += ["", f"Command: `{command}`"]
    md += [
        "",
        f"Work directory `{state.work_dir}`, run directory `{out}`, total {total_seconds:.1f} s.",
        "",
    ]

    md += ["## Stages", ""]
    md += table(
        ["stage", "seconds", "reused", "result"],
        [
            [r.name, f"{r.seconds:.1f}", "yes" if r.reused else "no", r.line]
            for r in records.values()
        ],
    )

    generate = records.get("generate")
    if generate is not None:
        s = generate.details["summary"]
        md += ["", "## Data", ""]
        md += table(
            ["split", "rows", *s["label_rate"]["train"].keys(), "best achievable AUC"],
            [
                [
                    split,
                    f"{s['rows'][split]:,}",
                    *(f"{v:.2%}" for v in s["label_rate"][split].values()),
                    s["best_auc"].get(split),
                ]
                for split in ("train", "test")
                if split in s["label_rate"]
            ],
        )
        settings = s["settings"]
        md += [
            "",
            f"Generator: seed {settings['seed']}, signal {settings['signal']}, "
            f"{settings['num_users']:,} users, {settings['num_tweets']:,} tweets.",
        ]

    features = records.get("features")
    if features is not None:
        md += ["", "## Features", ""]
        md += table(
            ["role", "feature set", "train", "valid", "test", "seconds"],
            [
                [
                    role,
                    d["summary"]["features"],
                    f"{d['summary']['rows']['train']:,}",
                    f"{d['summary']['rows']['valid']:,}",
                    f"{d['summary']['rows']['test']:,}",
                    f"{d['summary']['seconds']:.1f}",
                ]
                for role, d in features.details.items()
                if "summary" in d
            ],
        )

    train = records.get("train")
    if train is not None:
        md += ["", "## Training", ""]
        for role, d in train.details.items():
            result = d["result"]
            run_dir = Path(d["run_dir"])
            history = read_history(run_dir)
            md += [f"### {role}: {d['model']}", ""]
            md += [
                f"Run directory `{run_dir}`; best {result['metric']} {_fmt(result['best'])} "
                f"at epoch {result['best_epoch']}.",
                "",
            ]
            if history:
                keys = [k for k in history[-1] if k != "epoch"]
                md += table(
                    ["epoch", *keys], [[h["epoch"], *(h.get(k) for k in keys)] for h in history]
                )
            if result.get("test"):
                md += [
                    "",
                    "Test: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["test"].items()),
                ]
            png = out / f"curves_{role}.png"
            if plot_curves(history, f"{role}: {d['model']}", png):
                md += ["", f"![{role} curves]({png.name})"]
            md += [""]
        if state.baselines:
            md += ranker_table(state, train)

    evaluate = records.get("evaluate")
    if evaluate is not None:
        report = evaluate.details["report"]
        names = list(next(iter(report["metrics"].values())))
        md += ["", "## Retrieval", ""]
        md += [
            f"{report['users']:,} users with held-out positives in `{report['split']}`, "
            f"{report['candidates']} candidates from the {report['index']} index.",
            "",
        ]
        md += table(
            ["method", *names], [[m, *(v[n] for n in names)] for m, v in report["metrics"].items()]
        )

    serve = records.get("serve")
    if serve is not None:
        md += ["", "## Serving smoke test", ""]
        md += [
            f"Server on `{serve.details['target']}`, ready in "
            f"{serve.details['startup_seconds']:.1f} s.",
            "",
        ]
        md += table(
            ["user", "fallback", "ms", "top items (score)"],
            [
                [
                    a["user"],
                    "yes" if a["fallback"] else "no",
                    f"{a['ms']:.1f}",
                    ", ".join(
                        f"{i} ({s:.3f})"
                        for i, s in zip(a["items"][:5], a["scores"][:5], strict=True)
                    ),
                ]
                for a in serve.details["answers"]
            ],
        )

    export = records.get("export")
    if export is not None:
        manifest = export.details.get("manifest")
        md += ["", "## Bundle", ""]
        md += [f"`{export.details.get('bundle')}`: {export.line}", ""]
        if manifest:
            md += table(
                ["file", "bytes"],
                [[name, f"{f['bytes']:,}"] for name, f in sorted(manifest["files"].items())],
            )
            md += [
                "",
                f"Format version {manifest['format_version']}, created {manifest['created']}, "
                f"git {manifest['git_sha'][:12]}.",
            ]

    text = "\n".join(md) + "\n"
    md_path = out / "report.md"
    md_path.write_text(text)
    (out / "report.html").write_text(markdown_to_html(text))
    return md_path
