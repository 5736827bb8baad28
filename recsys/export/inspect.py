"""`python -m recsys.export.inspect <bundle> [--no-verify]`: what a bundle holds.

Prints the manifest summary (format, provenance, source runs and their final metrics, the
index and its recall report), every file with its size, and whether the files match their
hashes (exit code 2 and the failing file if not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recsys.export.reader import BundleError, read_manifest, verify_bundle


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _metrics(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result.json"
    best = result.get("best")
    parts = [f"best {result.get('metric')} " + ("n/a" if best is None else f"{best:.4f}")]
    parts.append(f"at epoch {result.get('best_epoch')}")
    test = result.get("test") or {}
    parts += [f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, int | float)]
    return ", ".join(parts)


def summary(directory: Path, manifest: dict[str, Any]) -> str:
    lines = [
        f"bundle {directory}",
        f"  format version {manifest.get('format_version')}, models {manifest.get('format')}, "
        f"created {manifest.get('created')}, git {manifest.get('git_sha')}",
    ]
    packages = manifest.get("packages", {})
    lines.append(
        "  packages: "
        + ", ".join(
            f"{k} {packages[k]}" for k in ("torch", "faiss-cpu", "pyarrow") if k in packages
        )
    )
    for role, run in manifest.get("runs", {}).items():
        model = manifest.get("models", {}).get("ranker" if role == "ranker" else "user_tower", {})
        lines.append(
            f"  {role}: {run.get('model')} from {run.get('run_dir')} (best epoch "
            f"{run.get('best_epoch')}) -> {model.get('file')} "
            f"[{'+'.join(model.get('passes', []))}; max |exported - eager| "
            f"{model.get('max_abs_diff', float('nan')):.2g}]"
        )
        lines.append(f"    metrics: {_metrics(run.get('result'))}")
        lines.append(f"    data: {run.get('data')}")
    index = manifest.get("index", {})
    recall = index.get("recall", {})
    value = recall.get("recall")
    params = ", ".join(
        f"{k} {index[k]}"
        for k in (
            "hnsw_m",
            "ef_construction",
            "ef_search",
            "nlist",
            "nprobe",
            "pq_m",
            "pq_nbits",
            "refine",
        )
        if k in index
    )
    lines.append(
        f"  index: {index.get('type')} over {index.get('items', 0):,} items, dim "
        f"{index.get('dim')}" + (f" ({params})" if params else "")
    )
    lines.append(
        f"    recall@{recall.get('k')} vs exact search on {recall.get('users')} users: "
        + ("n/a" if value is None else f"{value:.4f}")
    )
    tables = manifest.get("tables", {})
    for role, counts in tables.items():
        lines.append(
            f"  {role} snapshot: " + ", ".join(f"{k} {v:,} rows" for k, v in counts.items())
        )
    lines.append(f"  popularity: {manifest.get('popularity', {}).get('items', 0):,} items")
    files = manifest.get("files", {})
    total = sum(e.get("bytes", 0) for e in files.values())
    lines.append(f"  files ({len(files)} + manifest.json, {_size(total)}):")
    width = max((len(f) for f in files), default=10)
    for name, entry in files.items():
        lines.append(f"    {name:<{width}}  {_size(entry.get('bytes', 0)):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.export.inspect", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 checks")
    args = parser.parse_args(argv)
    try:
        manifest = read_manifest(args.bundle)
        print(summary(args.bundle, manifest))
        if not args.no_verify:
            verify_bundle(args.bundle)
            print(f"  check: format version and all {len(manifest['files'])} file hashes OK")
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
