"""The issue's claim on the real chain: on generated data with the planted signal (personal
exposure), two-tower recall beats the popularity list in `recsys.evaluate`.

generate (small world) -> preprocess two-tower features (the shared SparkSession) -> train
two_tower (conf/experiment/recsys2021_two_tower.yaml, smaller towers) -> export -> evaluate.
The ranker comes from the export fixtures (other data): the bundle needs one, and only the
`retrieval` order (two-tower + Faiss) and `popularity` are compared here. On the loaded
2-core machine: 40 s beside the other integration tests (their fixtures shared), 112 s alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.generator import GeneratorSettings, generate
from recsys.evaluate import EvaluateSettings, evaluate_bundle
from recsys.export import ExportSettings, export_bundle
from recsys.preprocess import preprocess
from recsys.train.run import run_training
from tests.conftest import compose_preprocess
from tests.helpers.train_config import train_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit's notice
]

# 20 rows per user on average over a 4,000-tweet catalogue: enough history for the user
# tower to learn, small enough for Spark and training to take seconds
SETTINGS = GeneratorSettings(
    rows=30_000, num_users=1_000, num_tweets=4_000, num_hashtags=200, num_domains=50, seed=0
)


def test_two_tower_recall_beats_popularity_on_generated_data(
    spark, export_runs: dict[str, Path], tmp_path: Path
) -> None:
    raw, processed, run_dir = tmp_path / "raw", tmp_path / "tt", tmp_path / "run_tt"
    generate(SETTINGS, raw, workers=1)
    cfg = compose_preprocess(
        [f"data={raw}", f"out={processed}", "features=recsys2021_two_tower"], tmp_path / "pp"
    )
    preprocess(cfg, spark=spark)
    run_training(
        train_config(
            processed,
            run_dir,
            "two_tower",
            "trainer.epochs=10",
            "trainer.batch_size=1024",
            "trainer.lr=0.003",
            "model.tower_units=[64,32]",
        ),
        run_dir,
    )
    bundle = tmp_path / "bundle"
    export_bundle(
        ExportSettings(
            ranker_run=str(export_runs["wide_deep"]), retrieval_run=str(run_dir), out=str(bundle)
        )
    )
    # The project's protocol (evaluate's default): each user's train items excluded, the
    # served order (two-tower plus the popularity prior chosen on valid) against popularity
    # and item-kNN. Measured at this seed (326 users): recall@10 0.061 vs 0.048 (item-kNN
    # 0.005), ndcg@10 0.034 vs 0.026, recall@50 0.139 vs 0.137 (item-kNN 0.018).
    report = evaluate_bundle(EvaluateSettings(bundle=str(bundle), data=str(processed), k=[10, 50]))
    assert report["users"] > 200, report
    served, popularity = report["metrics"]["blend"], report["metrics"]["popularity"]
    knn = report["metrics"]["item_knn"]
    assert served["recall@10"] > 1.15 * popularity["recall@10"], report["metrics"]
    assert served["ndcg@10"] > 1.15 * popularity["ndcg@10"], report["metrics"]
    assert served["recall@50"] > max(popularity["recall@50"], knn["recall@50"]), report["metrics"]
    # Repeats counted: the generator plants repeated exposure to followed authors' tweets.
    # Measured at this seed (378 users): recall@50 0.133 vs 0.127 (item-kNN 0.177). Before
    # issue 16's two-tower defaults (user histories hiding the row's own item, an L2 prior,
    # the best epoch chosen on recall of new items) the towers memorised repeats: 0.226 vs
    # 0.133, ndcg@10 4x popularity's. The defaults now favour new items (README known issues).
    repeats = evaluate_bundle(
        EvaluateSettings(bundle=str(bundle), data=str(processed), k=[10, 50], exclude_train=False)
    )
    two_tower, popularity = repeats["metrics"]["retrieval"], repeats["metrics"]["popularity"]
    assert two_tower["recall@50"] > popularity["recall@50"], repeats["metrics"]
