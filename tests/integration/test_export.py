"""Export to a bundle and load it back: equal scores, exact / approximate index, refusals.

Processed data comes from tests/helpers/bundle_data.py (no Spark); the models are trained
for real on the local backend (a few seconds), once per module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.evaluate import EvaluateSettings, evaluate_bundle, rank_candidates, ranking_metrics
from recsys.export import (
    FORMAT_VERSION,
    BundleError,
    ExportError,
    ExportSettings,
    export_bundle,
    layout,
    load_bundle,
)
from recsys.export.blend import BlendSettings
from recsys.export.index import IndexSettings, exact_top_k
from recsys.export.tensors import features_of, read_table, to_tensors
from recsys.export.writer import load_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit's notice
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(export_runs: dict[str, Path]) -> dict[str, Path]:
    return export_runs


def _export(runs: dict[str, Path], out: Path, ranker: str = "wide_deep", **kwargs) -> dict:
    settings = ExportSettings(
        ranker_run=str(runs[ranker]), retrieval_run=str(runs["two_tower"]), out=str(out), **kwargs
    )
    return export_bundle(settings)


@pytest.fixture(scope="module")
def bundle_dir(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "default"
    _export(runs, out)
    return out


def _test_rows(data: Path) -> pa.Table:
    return read_table(data / "test")


@pytest.mark.parametrize("ranker", ["wide_deep", "deepfm"])
def test_exported_ranker_and_user_tower_score_like_the_eager_models(
    runs: dict[str, Path], bundle_dir: Path, tmp_path: Path, ranker: str
) -> None:
    out = bundle_dir if ranker == "wide_deep" else tmp_path / "bundle"
    if ranker != "wide_deep":
        _export(runs, out, ranker=ranker)
    bundle = load_bundle(out)
    rows = _test_rows(runs["data"])
    eager = load_run(runs[ranker], "ranker")
    tower = load_run(runs["two_tower"], "retrieval").model.user_tower
    ranker_features = features_of(eager.spec, ("wide", "deep"))
    user_features = features_of(eager.spec, ("user_tower",))
    for n in (1, 7, rows.num_rows):
        part = rows.slice(0, n)
        batch = to_tensors(part, ranker_features)
        with torch.no_grad():
            got, want = bundle.ranker(batch), eager.model(batch)
            assert got.shape == (n,)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            users = to_tensors(part, user_features)
            torch.testing.assert_close(bundle.user_tower(users), tower(users), atol=1e-5, rtol=0)
    manifest = bundle.manifest
    assert manifest["models"]["ranker"]["max_abs_diff"] <= 1e-5
    assert manifest["runs"]["ranker"]["model"] == type(eager.model).__name__


def test_bundle_holds_every_file_with_its_hash_and_no_pickle(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / layout.MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    files = set(manifest["files"])
    expected = {
        "README.txt",
        "ranker.pt",
        "user_tower.pt",
        "items.faiss",
        "item_ids.parquet",
        "popularity.parquet",
    }
    for part in ("ranker", "retrieval"):
        expected |= {f"{part}/feature_spec.json", f"{part}/users.parquet", f"{part}/items.parquet"}
        expected |= {f"{part}/pipeline/pipeline.json"}
    assert expected <= files
    assert all(layout.sha256(bundle_dir / f) == e["sha256"] for f, e in manifest["files"].items())
    suffixes = {Path(f).suffix for f in files}
    assert suffixes <= {".txt", ".pt", ".faiss", ".parquet", ".json"}
    for part in ("ranker", "retrieval"):
        for run_key in ("config", "result"):
            assert manifest["runs"][part][run_key]
    assert manifest["git_sha"] and manifest["packages"]["torch"]
    assert not list(bundle_dir.parent.glob(".default.tmp-*"))  # temp directory renamed away


def test_snapshots_serve_features_by_raw_id_and_transform_raw_rows(
    runs: dict[str, Path], bundle_dir: Path
) -> None:
    bundle = load_bundle(bundle_dir)
    snap = bundle.ranker_features
    rows, found = snap.rows("user", ["u0", "nobody", "u1"])
    assert found.tolist() == [True, False, True]
    assert rows["user"][1].as_py() == 0 and rows["user"][0].as_py() >= 2
    assert rows["user_raw"][0].as_py() == "u0"
    items, _ = snap.rows("item", ["i0"])
    raw = {"user_id": "u0", "item_id": "i0", "category": "c-unseen", "tags": "t1", "activity": 0.5}
    online = snap.pipeline.transform_batch([raw])
    assert online["item"][0].as_py() == items["item"][0].as_py()
    assert online["user"][0].as_py() == rows["user"][0].as_py()
    assert online["category"][0].as_py() == 1  # unknown value
    assert "label" not in online.column_names  # training-only step skipped online
    # the popularity list: positive interactions of the training split, most first
    popular = bundle.popularity
    assert popular.num_rows > 0
    counts = popular[layout.INTERACTIONS].to_numpy()
    assert (np.diff(counts) <= 0).all()
    train = read_table(runs["data"] / "train")
    top = popular[layout.ITEM_ID][0].as_py()
    mask = train["item"].to_numpy() == top
    assert counts[0] == int(train["label"].to_numpy()[mask].sum())


def test_flat_index_returns_the_exact_top_k_with_the_popularity_prior(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    manifest = _export(
        runs,
        tmp_path / "flat",
        index=IndexSettings(type="flat"),
        blend=BlendSettings(prior_beta=0.1),
    )
    assert manifest["index"]["recall"]["recall"] == 1.0
    assert manifest["retrieval_prior"]["beta"] == 0.1
    bundle = load_bundle(tmp_path / "flat")
    items = bundle.retrieval_features.items
    tower = load_run(runs["two_tower"], "retrieval").model.item_tower
    spec = bundle.retrieval_features.spec
    with torch.no_grad():
        vectors = tower(to_tensors(items, features_of(spec, ("item_tower",)))).numpy()
    train = read_table(runs["data"] / "train", columns=["item", "label"])
    positive = train["item"].to_numpy()[train["label"].to_numpy() > 0.5]
    counts = np.bincount(positive, minlength=int(items["item"].to_numpy().max()) + 1)
    log_pop = np.log1p(counts[items["item"].to_numpy()])
    users = bundle.retrieval_features.users.slice(0, 50)
    queries = bundle.user_vectors(users)
    k = 20
    _, rows = bundle.index.search(bundle.query_vectors(queries), k)
    # <user, item> + beta * log(1 + the item's positive train interactions)
    scores = queries @ vectors.T + 0.1 * log_pop[None, :]
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    for q in range(len(queries)):
        # equal as sets, and in score order (ties aside)
        assert set(rows[q]) == set(want[q]) or np.allclose(
            np.sort(scores[q, rows[q]]), np.sort(scores[q, want[q]]), atol=1e-6
        )
        assert (np.diff(scores[q, rows[q]]) <= 1e-6).all()
    # the id map gives the encoded and raw id of each index row
    ids = bundle.item_ids
    assert ids[layout.ITEM_ID].to_pylist() == items["item"].to_pylist()
    assert ids[layout.RAW_ID].to_pylist() == items["item_raw"].to_pylist()


def test_hnsw_at_the_defaults_recalls_at_least_95_percent(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    report = bundle.manifest["index"]
    assert report["type"] == "hnsw"
    assert report["recall"]["recall"] >= 0.95
    # and measured again from the loaded bundle, on every user, at k=20
    queries = bundle.query_vectors(bundle.user_vectors(bundle.retrieval_features.users))
    vectors = bundle.index.reconstruct_n(0, bundle.index.ntotal)
    truth = exact_top_k(vectors, queries, 20)
    _, found = bundle.index.search(queries, 20)
    recall = np.mean([len(np.intersect1d(t, f)) / 20 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.95


def test_ivfpq_index_exports_and_reports_its_recall(runs: dict[str, Path], tmp_path: Path) -> None:
    manifest = _export(runs, tmp_path / "ivfpq", index=IndexSettings(type="ivfpq", recall_k=20))
    report = manifest["index"]
    assert report["type"] == "ivfpq" and report["pq_m"] >= 1
    assert 0.0 < report["recall"]["recall"] <= 1.0
    with pytest.raises(ExportError, match=r"recall@20 .* < index.min_recall"):
        _export(
            runs,
            tmp_path / "strict",
            index=IndexSettings(type="ivfpq", recall_k=20, pq_nbits=1, min_recall=0.999),
        )
    assert not (tmp_path / "strict").exists()


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


@pytest.mark.parametrize(
    "name", ["item_ids.parquet", "ranker.pt", "retrieval/pipeline/pipeline.json"]
)
def test_a_tampered_file_is_refused_by_name(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    copy = _copy(bundle_dir, tmp_path)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}: sha256 does not match"):
        load_bundle(copy)


def test_a_missing_or_extra_file_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path)
    (copy / "popularity.parquet").unlink()
    with pytest.raises(
        BundleError, match=r"popularity\.parquet: listed in the manifest but missing"
    ):
        load_bundle(copy)
    shutil.copy(bundle_dir / "popularity.parquet", copy / "popularity.parquet")
    (copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"notes\.txt: not listed in the manifest"):
        load_bundle(copy)


def test_an_unknown_format_version_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=r"manifest.json: bundle format version 2 is not supported"
    ):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(copy)


def test_export_of_a_run_without_a_checkpoint_fails_clearly(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    settings = ExportSettings(
        ranker_run=str(empty), retrieval_run=str(runs["two_tower"]), out=str(tmp_path / "b")
    )
    with pytest.raises(ExportError, match=r"ranker_run=.*empty_run holds no checkpoint"):
        export_bundle(settings)
    settings.ranker_run = str(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="is not a directory"):
        export_bundle(settings)
    # the roles swapped: a two-tower run is no ranker
    settings.ranker_run = str(runs["two_tower"])
    with pytest.raises(ExportError, match="not a ranker"):
        export_bundle(settings)
    assert not (tmp_path / "b").exists()


def test_an_existing_bundle_is_replaced_only_with_overwrite(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ExportError, match="already exists; pass overwrite=true"):
        _export(runs, out)
    _export(runs, out, overwrite=True, index=IndexSettings(type="flat"))
    assert not (out / "old.txt").exists()
    load_bundle(out)


def test_cli_export_and_inspect(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli_bundle"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "recsys.export",
        f"ranker_run={runs['wide_deep']}",
        f"retrieval_run={runs['two_tower']}",
        f"out={out}",
        "index.type=flat",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").is_file()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "error: output" in again.stderr and "already exists" in again.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "recsys.export.inspect", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    for text in ("format version 1", "ranker.pt", "items.faiss", "val/auc", "recall@"):
        assert text in shown.stdout


def test_ranker_inputs_from_the_snapshots_match_the_processed_rows(
    runs: dict[str, Path], bundle_dir: Path
) -> None:
    """Serving's path (features looked up by raw id) scores a pair as training data does."""
    bundle = load_bundle(bundle_dir)
    rows = _test_rows(runs["data"]).slice(0, 40)
    snap = bundle.ranker_features
    user_raw = dict(
        zip(snap.users["user"].to_pylist(), snap.users["user_raw"].to_pylist(), strict=True)
    )
    item_raw = dict(
        zip(snap.items["item"].to_pylist(), snap.items["item_raw"].to_pylist(), strict=True)
    )
    known = [
        i
        for i, (u, it) in enumerate(
            zip(rows["user"].to_pylist(), rows["item"].to_pylist(), strict=True)
        )
        if u in user_raw and it in item_raw
    ]
    rows = rows.take(known)
    users = [user_raw[u] for u in rows["user"].to_pylist()]
    items = np.array([[item_raw[i]] for i in rows["item"].to_pylist()], dtype=object)
    got = rank_candidates(bundle, users, items)[:, 0]
    want = bundle.ranker(bundle.ranker_batch(rows)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_evaluate_two_tower_beats_popularity(runs: dict[str, Path], bundle_dir: Path, tmp_path):
    out = tmp_path / "evaluation.json"
    report = evaluate_bundle(EvaluateSettings(bundle=str(bundle_dir), k=[10, 50], out=str(out)))
    assert json.loads(out.read_text()) == report
    assert report["users"] > 100 and report["data"] == str(runs["data"])
    metrics = report["metrics"]
    assert set(metrics) == {"blend", "rank", "retrieval", "popularity", "item_knn"}
    for method in metrics.values():
        for k in (10, 50):
            assert 0.0 <= method[f"ndcg@{k}"] <= 1.0 and 0.0 <= method[f"recall@{k}"] <= 1.0
        assert method["recall@10"] <= method["recall@50"]
    # planted clusters: the user tower finds them, a global popularity list cannot
    assert metrics["retrieval"]["recall@50"] > metrics["popularity"]["recall@50"] + 0.1
    assert metrics["retrieval"]["recall@10"] > metrics["popularity"]["recall@10"]


def test_ranking_metrics_by_hand() -> None:
    ranked = np.array([[5, 3, 9], [1, 2, 4]])
    got = ranking_metrics(ranked, [{3, 7}, {8}], [1, 3])
    assert got["recall@1"] == [0.0, 0.0]
    assert got["recall@3"] == [0.5, 0.0]
    # user 0: one hit at rank 2 -> 1/log2(3); ideal: two hits -> 1 + 1/log2(3)
    assert got["ndcg@3"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert got["ndcg@3"][1] == 0.0
