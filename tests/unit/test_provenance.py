import json
from pathlib import Path

from omegaconf import OmegaConf

from recsys.provenance import git_sha, package_versions, record_run


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
