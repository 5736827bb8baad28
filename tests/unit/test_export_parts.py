"""Export building blocks without training: configs, module formats, Faiss index settings."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from recsys.config import CONF_DIR, register_configs
from recsys.evaluate import EvaluateError, EvaluateSettings, settings_from_config
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
from recsys.models.wide_deep import WideDeep
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
    assert params["type"] == "hnsw" and params["ef_search"] == 256
    assert recall_at_k(hnsw, vectors, queries, 100) >= 0.95
    write_index(hnsw, tmp_path / "items.faiss")
    again = read_index(tmp_path / "items.faiss")
    assert again.hnsw.efSearch == 256
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
