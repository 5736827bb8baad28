"""The bundle's file layout, format version, README text and file hashes (writer and reader).

A bundle is one directory; `manifest.json` lists every other file with its sha256.

    manifest.json                 format version, provenance, source runs, metrics, file hashes
    README.txt                    what each file is (this layout, in words)
    ranker.pt | ranker.pt2        the ranker (TorchScript archive | AOTInductor package)
    user_tower.pt | .pt2          the two-tower run's user tower (same format as the ranker)
    items.faiss                   Faiss index of the item tower's vectors (faiss.write_index)
    item_ids.parquet              index row -> encoded item id (retrieval encoding) and raw id
    popularity.parquet            items by interactions in the training split (cold start)
    ranker/ retrieval/            feature snapshot of each source run's processed data:
      feature_spec.json             the FeatureSpec the model was trained with
      pipeline/pipeline.json        fitted FeaturePipeline state (transform_batch at serving)
      pipeline/vocabularies/*.parquet  its vocabularies (value, count, index)
      users.parquet items.parquet   encoded user / item feature tables, one row per id
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
README = "README.txt"
RANKER = "ranker"  # + format suffix
USER_TOWER = "user_tower"  # + format suffix
INDEX = "items.faiss"
ITEM_IDS = "item_ids.parquet"
POPULARITY = "popularity.parquet"
SNAPSHOTS = ("ranker", "retrieval")
SPEC = "feature_spec.json"
PIPELINE = "pipeline"
USERS = "users.parquet"
ITEMS = "items.parquet"

# columns of item_ids.parquet and popularity.parquet
ROW, ITEM_ID, RAW_ID = "row", "item_id", "raw_id"
INTERACTIONS, IMPRESSIONS = "interactions", "impressions"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(directory: Path) -> list[str]:
    """Every file under `directory` but the manifest, as sorted POSIX relative paths."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def readme(ranker_file: str, user_tower_file: str, fmt: str) -> str:
    how = (
        "torch.jit.load(path)"
        if fmt == "torchscript"
        else "torch._inductor.aoti_load_package(path)"
    )
    return f"""\
Recommender bundle (format version {FORMAT_VERSION}), written by `python -m recsys.export`.
Serving needs nothing but this directory; `recsys.export.load_bundle(dir)` checks every
file against manifest.json and loads it. No file is a pickle.

manifest.json        format version, created time, git SHA, package versions, the resolved
                     configs and final metrics (result.json) of the two source runs, the
                     index's recall report, and the sha256 and size of every other file
README.txt           this file
{ranker_file:<20} the ranker ({fmt}; load with {how}): forward(features) takes a
                     Dict[str, Tensor] of the encoded features of a batch of candidates
                     (names and shapes in ranker/feature_spec.json, inputs wide/deep) and
                     returns B logits; any batch size
{user_tower_file:<20} the two-tower run's user tower ({fmt}): Dict[str, Tensor] of user
                     features (retrieval/feature_spec.json, input user_tower) -> B x D unit
                     vectors
{INDEX:<20} Faiss index (faiss.read_index) of the item tower's vectors of every item in
                     retrieval/items.parquet; inner product; search returns index rows
{ITEM_IDS:<20} index row -> {ITEM_ID} (encoded in the retrieval vocabulary) and {RAW_ID}
{POPULARITY:<20} items of the retrieval training split by {INTERACTIONS} (positive labels;
                     all rows if the data has no label), then {IMPRESSIONS}: the cold-start list
ranker/, retrieval/  feature snapshots of the processed data each model was trained on:
  {SPEC:<18} the FeatureSpec (kinds, sizes, entities, model inputs, statistics)
  {PIPELINE}/pipeline.json  fitted FeaturePipeline state; FeaturePipeline.load(dir) then
                     transform_batch(rows) encodes request-time raw rows (context features)
  {PIPELINE}/vocabularies/  one parquet vocabulary per encoded column (value, count, index)
  {USERS:<18} encoded user features, one row per known user (<user id>_raw: the raw id)
  {ITEMS:<18} encoded item features, one row per known item (<item id>_raw: the raw id)
"""
