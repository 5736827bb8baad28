"""docs/features.md's "Bring your own table" YAML composes and builds a pipeline as written."""

import re
import textwrap
from pathlib import Path

from hydra import compose, initialize_config_dir

from recsys.config import CONF_DIR
from recsys.preprocess import build_pipeline
from tests.conftest import REPO


def _doc_yaml_blocks() -> list[str]:
    text = (REPO / "docs" / "features.md").read_text()
    section = text.split("## Bring your own table", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_the_documented_dataset_and_features_work_as_written(tmp_path: Path) -> None:
    dataset, features = _doc_yaml_blocks()
    (tmp_path / "dataset").mkdir()
    (tmp_path / "features").mkdir()
    (tmp_path / "dataset" / "mydata.yaml").write_text(dataset)
    (tmp_path / "features" / "mine.yaml").write_text(features)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="preprocess",
            overrides=[f"hydra.searchpath=[file://{tmp_path}]", "dataset=mydata", "features=mine"],
        )
    assert cfg.data == "/data/mydata"
    pipeline = build_pipeline(cfg)
    assert pipeline.raw_columns == {
        "user_id": "string",
        "item_id": "string",
        "clicked": "bool",
        "price": "float64",
    }
    assert pipeline.steps[1].params.min_freq == 3
    assert list(pipeline.outputs) == ["label", "user_id", "item_id", "price"]
