"""`format=aoti`: the ranker and user tower as AOTInductor packages score like the eager models.

Slow: AOTInductor compiles each model with the C++ compiler (~30-60 s each on two cores).
"""

from pathlib import Path

import pytest
import torch

from recsys.export import ExportSettings, export_bundle, load_bundle
from recsys.export.index import IndexSettings
from recsys.export.tensors import features_of, read_table, to_tensors
from recsys.export.writer import load_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit's notice
]


def test_aoti_bundle_scores_like_the_eager_models(
    export_runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "aoti"
    manifest = export_bundle(
        ExportSettings(
            ranker_run=str(export_runs["wide_deep"]),
            retrieval_run=str(export_runs["two_tower"]),
            out=str(out),
            format="aoti",
            index=IndexSettings(type="flat"),
        )
    )
    assert manifest["format"] == "aoti"
    assert {"ranker.pt2", "user_tower.pt2"} <= set(manifest["files"])
    bundle = load_bundle(out)
    ranker = load_run(export_runs["wide_deep"], "ranker")
    tower = load_run(export_runs["two_tower"], "retrieval").model.user_tower
    rows = read_table(export_runs["data"] / "test")
    for n in (1, 7, rows.num_rows):  # the batch dimension is dynamic
        part = rows.slice(0, n)
        batch = to_tensors(part, features_of(ranker.spec, ("wide", "deep")))
        users = to_tensors(part, features_of(ranker.spec, ("user_tower",)))
        with torch.no_grad():
            torch.testing.assert_close(bundle.ranker(batch), ranker.model(batch), atol=1e-5, rtol=0)
            torch.testing.assert_close(bundle.user_tower(users), tower(users), atol=1e-5, rtol=0)
