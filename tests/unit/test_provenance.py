import errno
import json
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recsys.data import criteo_format
from recsys.models.wide_deep import WideDeep
from recsys.provenance import (
    git_sha,
    open_for_write,
    package_versions,
    record_run,
    temp_dir_for,
    write_json_atomic,
)
from recsys.train.checkpoints import read_checkpoint, replace_dir, write_checkpoint, write_rank_rng
from tests.helpers.processed_data import spec
from tests.helpers.umask import umask


def test_git_sha_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_sha(tmp_path) == "unknown"


def test_package_versions_name_installed_and_absent_packages() -> None:
    versions = package_versions(("torch", "no-such-package-xyz"))
    assert versions["torch"].startswith("2.13")
    assert versions["no-such-package-xyz"] == "absent"


def test_record_run_writes_the_resolved_config(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "rows": "${n}", "n": 5})
    record_run(cfg, output_dir=tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["config"] == {"seed": 0, "rows": 5, "n": 5}
    assert info["overrides"] == []
    assert info["git_sha"]
    assert "torch" in info["packages"]
    assert not list(tmp_path.glob(".*.tmp"))


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("mask", "file_mode"),
    [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)],
    ids=["022", "027", "077"],
)
def test_json_files_get_the_mode_the_umask_gives(tmp_path: Path, mask: int, file_mode: int) -> None:
    with umask(mask):
        write_json_atomic(tmp_path / "run_info.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "run_info.json").stat().st_mode) == file_mode
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
    ids=["022", "027"],
)
def test_a_checkpoint_in_a_run_directory_gets_the_umask_s_modes(
    tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    model = WideDeep(spec(), hidden_units=[8])
    with umask(mask):
        source = write_checkpoint(
            tmp_path / "written",
            model=model,
            wrapper_extra={},
            optimizers=[torch.optim.Adam(model.parameters())],
            scheduler_state=None,
            state={"epoch": 0},
            spec=spec(),
            config={"model": {}},
        )
        write_rank_rng(source, 0)
        source.joinpath("config.json").chmod(0o600)  # as written before this fix: not copied
        replace_dir(source, tmp_path / "run" / "checkpoints" / "last")
    modes = _modes(tmp_path / "run")
    assert {"checkpoints/last/model.pt", "checkpoints/last/state.json"} <= set(modes)
    expected = {
        name: dir_mode if (tmp_path / "run" / name).is_dir() else file_mode for name in modes
    }
    assert modes == expected
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last")["state"]["epoch"] == 0


def test_a_write_that_fails_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "ranker.pt"
    # what f.write() raises on a full disk: an OSError naming no file
    with pytest.raises(OSError) as raised, open_for_write(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)


def test_a_failed_temp_dir_removes_itself_and_the_parent_it_made(tmp_path: Path) -> None:
    target = tmp_path / "run" / "checkpoints" / "last"
    (tmp_path / "run").mkdir()
    with pytest.raises(OSError), temp_dir_for(target) as tmp:
        (tmp / "model.pt").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list((tmp_path / "run").iterdir()) == []  # no .last.tmp-*, no empty checkpoints/
    with temp_dir_for(target) as tmp:
        (tmp / "model.pt").write_bytes(b"x")
    assert (target / "model.pt").read_bytes() == b"x"


def test_generated_criteo_files_get_the_umask_s_mode(tmp_path: Path) -> None:
    with umask(0o022):
        path = criteo_format.write(tmp_path / "day_0.tsv", rows=20)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["day_0.tsv"]
