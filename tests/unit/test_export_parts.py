"""Export building blocks without training: configs, module formats, Faiss index settings."""

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from recsys.config import CONF_DIR, register_configs
from recsys.evaluate import EvaluateError, EvaluateSettings, settings_from_config
from recsys.export import layout
from recsys.export.__main__ import settings_from_config as export_settings
from recsys.export.formats import ExportFormatError, load_module, save_module
from recsys.export.index import (
    RECALL_TARGET,
    IndexConfigError,
    IndexSettings,
    build_index,
    exact_top_k,
    read_index,
    recall_at_k,
    search,
    write_index,
)
from recsys.export.reader import BundleError, load_bundle
from recsys.export.writer import ExportError, load_run
from recsys.models.wide_deep import WideDeep
from recsys.train.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
from tests.helpers.processed_data import spec

register_configs()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's notice


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_export_config_defaults_and_typos() -> None:
    cfg = _compose("export", ["ranker_run=a", "retrieval_run=b", "index.ef_search=64"])
    settings = export_settings(cfg)
    assert settings.format == "torchscript" and settings.index.type == "hnsw"
    assert settings.index.ef_search == 64 and settings.index.min_recall is None
    with pytest.raises(ConfigCompositionException):
        _compose("export", ["index.ef_serch=64"])
    cfg = _compose("export", ["ranker_run=a", "retrieval_run=b", "index.type=annoy"])
    with pytest.raises(IndexConfigError, match=r"index\.type 'annoy'"):
        export_settings(cfg).validate()


def test_evaluate_config_and_checks(tmp_path: Path) -> None:
    cfg = _compose("evaluate", ["bundle=b", "k=[5,20]"])
    cfg.paths.output_dir = str(tmp_path)
    settings = settings_from_config(cfg)
    assert settings.k == [5, 20] and settings.candidates == 200 and settings.data is None
    with pytest.raises(EvaluateError, match="candidates"):
        EvaluateSettings(bundle="b", k=[300]).validate()


def test_torchscript_round_trip_and_unknown_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WideDeep(spec(), hidden_units=[16])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    b = 9
    example = {
        "user": torch.randint(0, 202, (b,)),
        "item": torch.randint(0, 302, (b,)),
        "category": torch.randint(0, 12, (b,)),
        "cross": torch.randint(0, 50, (b,)),
        "tags": torch.randint(0, 32, (b, 3)),
        "activity": torch.rand(b),
    }
    report = save_module(model, example, tmp_path / "ranker.pt", "torchscript")
    assert report.passes[0] == "script" and report.max_abs_diff <= 1e-5
    loaded = load_module(tmp_path / "ranker.pt", "torchscript")
    bigger = {k: torch.cat([v, v, v]) for k, v in example.items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(bigger), model(bigger), atol=1e-5, rtol=0)
    with pytest.raises(ExportFormatError, match="format 'onnx'"):
        save_module(model, example, tmp_path / "x", "onnx")


def test_flat_is_exact_and_hnsw_recalls_at_the_defaults(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 3000, 32), _unit(rng, 100, 32)
    flat, params = build_index(vectors, IndexSettings(type="flat"))
    assert params["items"] == 3000 and params["dim"] == 32
    _, rows = search(flat, queries, 50)
    want = np.argsort(-(queries @ vectors.T), axis=1)[:, :50]
    np.testing.assert_array_equal(rows, want)
    hnsw, params = build_index(vectors, IndexSettings())
    assert params["type"] == "hnsw" and params["ef_search"] == 512
    assert recall_at_k(hnsw, vectors, queries, 100) >= 0.95
    write_index(hnsw, tmp_path / "items.faiss")
    again = read_index(tmp_path / "items.faiss")
    assert again.hnsw.efSearch == 512
    np.testing.assert_array_equal(search(again, queries, 10)[1], search(hnsw, queries, 10)[1])
    np.testing.assert_array_equal(exact_top_k(vectors, queries, 10), want[:, :10])


def test_ivfpq_settings_fit_small_catalogues_and_bad_ones_fail() -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 500, 16)
    index, params = build_index(vectors, IndexSettings(type="ivfpq"))
    assert params["pq_m"] == 4 and params["pq_nbits"] == 8 and params["nlist"] == 12
    assert index.ntotal == 500
    with pytest.raises(IndexConfigError, match="pq_m=5 does not divide the dimension 16"):
        build_index(vectors, IndexSettings(type="ivfpq", pq_m=5))
    with pytest.raises(IndexConfigError, match="ef_search must be >= 1"):
        build_index(vectors, IndexSettings(ef_search=0))
    with pytest.raises(IndexConfigError, match=r"index\.refine .* needs type=ivfpq"):
        build_index(vectors, IndexSettings(refine=4))
    with pytest.raises(IndexConfigError, match=r"index\.refine must be >= 1"):
        build_index(vectors, IndexSettings(type="ivfpq", refine=0))


def test_ivfpq_codes_lose_recall_and_refine_restores_it(tmp_path: Path) -> None:
    """Random vectors are IVF-PQ's worst case: at the defaults the index misses part of the
    exact top 100 (below the target, which the export report warns about). Re-scoring 10x
    the candidates with the exact vectors (refine) removes the PQ error, probing every list
    the coarse misses; the refine factor survives a write and read."""
    rng = np.random.default_rng(2)
    vectors, queries = _unit(rng, 3000, 32), _unit(rng, 100, 32)
    codes, params = build_index(vectors, IndexSettings(type="ivfpq"))
    assert recall_at_k(codes, vectors, queries, 100) < RECALL_TARGET
    settings = IndexSettings(type="ivfpq", refine=10, nprobe=params["nlist"])
    refined, params = build_index(vectors, settings)
    assert params["refine"] == 10
    recall = recall_at_k(refined, vectors, queries, 100)
    assert recall >= RECALL_TARGET
    write_index(refined, tmp_path / "items.faiss")
    again = read_index(tmp_path / "items.faiss")
    assert recall_at_k(again, vectors, queries, 100) == recall


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_module_and_index_files_get_the_umask_s_mode(tmp_path: Path, mask: int, mode: int) -> None:
    model = WideDeep(spec(), hidden_units=[8])
    example = {
        "user": torch.randint(0, 202, (4,)),
        "item": torch.randint(0, 302, (4,)),
        "category": torch.randint(0, 12, (4,)),
        "cross": torch.randint(0, 50, (4,)),
        "tags": torch.randint(0, 32, (4, 3)),
        "activity": torch.rand(4),
    }
    index, _ = build_index(_unit(np.random.default_rng(0), 50, 8), IndexSettings(type="flat"))
    old = os.umask(mask)
    try:
        save_module(model, example, tmp_path / "ranker.pt", "torchscript")
        write_index(index, tmp_path / "items.faiss")
    finally:
        os.umask(old)
    for name in ("ranker.pt", "items.faiss"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert read_index(tmp_path / "items.faiss").ntotal == 50


def test_a_manifest_without_models_is_named(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("x")
    manifest = {
        "format_version": layout.FORMAT_VERSION,
        "format": "torchscript",
        "files": {"README.txt": {"sha256": layout.sha256(tmp_path / "README.txt"), "bytes": 1}},
    }
    (tmp_path / layout.MANIFEST).write_text(json.dumps(manifest))
    where = tmp_path / layout.MANIFEST
    with pytest.raises(BundleError) as raised:
        load_bundle(tmp_path)
    assert str(raised.value) == f"{where} lacks 'models'; re-export the bundle"
    manifest["models"] = {"ranker": {"file": "ranker.pt", "inputs": []}, "user_tower": "x"}
    (tmp_path / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"has a str for 'models\.user_tower'"):
        load_bundle(tmp_path, verify=False)


@pytest.mark.parametrize("name", ["config.json", "state.json"])
def test_a_checkpoint_with_unparsable_json_is_named(tmp_path: Path, name: str) -> None:
    model = WideDeep(spec(), hidden_units=[8])
    best = tmp_path / "run" / "checkpoints" / "best"
    best.parent.mkdir(parents=True)
    write_checkpoint(
        best,
        model=model,
        wrapper_extra={},
        optimizers=[torch.optim.Adam(model.parameters())],
        scheduler_state=None,
        state={"epoch": 0},
        spec=spec(),
        config={"model": {}, "data": "d"},
    )
    (best / name).write_text('{"model": ')
    problem = re.escape(f"checkpoint file {best / name} is not readable JSON")
    with pytest.raises(CheckpointError, match=problem):
        read_checkpoint(best)
    with pytest.raises(ExportError, match=re.escape(f"ranker run {tmp_path / 'run'}: ") + problem):
        load_run(tmp_path / "run", "ranker")
