"""MovieLens-100k from a recbole 1.2.1 wheel you downloaded -> three parquet tables.

    pip download recbole==1.2.1 --no-deps -d /tmp/ml100k
    python experiments/movielens100k/fetch.py /tmp/ml100k/recbole-1.2.1-py3-none-any.whl

The wheel holds MovieLens-100k as RecBole atomic files (recbole/dataset_example/ml-100k/).
Its licence forbids redistribution, so the data is never committed: this script takes it from
a wheel on disk (no network), checks the sha256 of the wheel and of each file it reads against
the hashes below, and writes, under `--out` (default data/movielens100k):

    interactions.parquet  user_id, item_id (strings), rating (float64), timestamp (int64)
    users.parquet         user_id, age (int64), gender, occupation, zip_code
    items.parquet         item_id, movie_title, release_year (int64, null when not a year),
                          genres (list<string>: the space-separated `class` field)

Format conversion only: no joins, no filtering, no features (those come from the YAML:
conf/dataset/movielens100k.yaml, conf/features/movielens100k*.yaml). The tables are written
to a temporary directory beside `--out` and renamed into place, so `--out` is complete or
absent.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import uuid
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
MEMBERS_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# the header each atomic file must start with (RecBole's `name:type` fields, tab-separated)
HEADERS = {
    "ml-100k.inter": ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    "ml-100k.user": [
        "user_id:token",
        "age:token",
        "gender:token",
        "occupation:token",
        "zip_code:token",
    ],
    "ml-100k.item": [
        "item_id:token",
        "movie_title:token_seq",
        "release_year:token",
        "class:token_seq",
    ],
}


class FetchError(Exception):
    """A wheel or file that is not the one expected; the message names it."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_members(wheel: Path) -> dict[str, bytes]:
    """The three atomic files of the wheel, each checked against its sha256."""
    if not wheel.is_file():
        raise FetchError(f"{wheel}: no such file (pip download recbole==1.2.1 --no-deps)")
    digest = sha256_of(wheel.read_bytes())
    if digest != WHEEL_SHA256:
        raise FetchError(
            f"{wheel}: sha256 {digest} is not the expected {WHEEL_SHA256} of {WHEEL_NAME}"
        )
    members = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in MEMBERS_SHA256.items():
                data = zf.read(f"{MEMBER_DIR}/{name}")
                if sha256_of(data) != expected:
                    raise FetchError(
                        f"{wheel}: {MEMBER_DIR}/{name} has sha256 {sha256_of(data)}, "
                        f"expected {expected}"
                    )
                members[name] = data
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel}: {e}") from e
    return members


def rows_of(name: str, data: bytes) -> list[list[str]]:
    """The tab-separated fields of each line after the checked header."""
    lines = data.decode("utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if header != HEADERS[name]:
        raise FetchError(f"{name}: header {header} is not {HEADERS[name]}")
    rows = [line.split("\t") for line in lines[1:] if line]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise FetchError(f"{name}: line {bad + 2} has {len(rows[bad])} fields, not {len(header)}")
    return rows


def _year(value: str) -> int | None:
    return int(value) if value.isdigit() else None  # two movies have no year ("unkonwn", "V")


def tables(members: dict[str, bytes]) -> dict[str, pa.Table]:
    """The three tables, field for field (types converted, nothing joined or dropped)."""
    inter = rows_of("ml-100k.inter", members["ml-100k.inter"])
    users = rows_of("ml-100k.user", members["ml-100k.user"])
    items = rows_of("ml-100k.item", members["ml-100k.item"])
    return {
        "interactions": pa.table(
            {
                "user_id": pa.array([r[0] for r in inter], pa.string()),
                "item_id": pa.array([r[1] for r in inter], pa.string()),
                "rating": pa.array([float(r[2]) for r in inter], pa.float64()),
                "timestamp": pa.array([int(float(r[3])) for r in inter], pa.int64()),
            }
        ),
        "users": pa.table(
            {
                "user_id": pa.array([r[0] for r in users], pa.string()),
                "age": pa.array([int(r[1]) for r in users], pa.int64()),
                "gender": pa.array([r[2] for r in users], pa.string()),
                "occupation": pa.array([r[3] for r in users], pa.string()),
                "zip_code": pa.array([r[4] for r in users], pa.string()),
            }
        ),
        "items": pa.table(
            {
                "item_id": pa.array([r[0] for r in items], pa.string()),
                "movie_title": pa.array([r[1] for r in items], pa.string()),
                "release_year": pa.array([_year(r[2]) for r in items], pa.int64()),
                "genres": pa.array([r[3].split() for r in items], pa.list_(pa.string())),
            }
        ),
    }


def fetch(wheel: Path, out: Path, overwrite: bool = False) -> dict[str, int]:
    """Write the tables under `out` (atomically); return their row counts."""
    if out.exists() and not overwrite:
        raise FetchError(f"{out} already exists; pass --overwrite to replace it")
    converted = tables(read_members(wheel))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, table in converted.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: table.num_rows for name, table in converted.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help=f"path of {WHEEL_NAME}")
    parser.add_argument("--out", type=Path, default=Path("data/movielens100k"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        rows = fetch(args.wheel, args.out, args.overwrite)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(f'{k} {v:,} rows' for k, v in rows.items())} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
