from pathlib import Path

import pytest

from recsys.features.feature_spec import Feature, FeatureSpec, FeatureSpecError


def _spec(**changes) -> FeatureSpec:
    features = [
        Feature("user", "categorical", ["enaging_user_id"], "user", ["deep", "user_tower"], 10),
        Feature("tags", "multi_categorical", ["hashtags"], "item", ["deep"], 7, 4, "mean"),
        Feature("cross", "cross", ["a", "b"], "context", ["wide"], 600),
        Feature("age", "continuous", ["x"], "user", ["deep"], stats={"min": 0.0, "max": 5.0}),
        Feature("label", "label", ["like_timestamp"]),
    ]
    return FeatureSpec(features=features, label="label", user_id="user", **changes)


def test_round_trip_through_json(tmp_path: Path) -> None:
    spec = _spec()
    spec.save(tmp_path)
    loaded = FeatureSpec.load(tmp_path)
    assert loaded == spec
    assert [f.name for f in loaded.for_input("deep")] == ["user", "tags", "age"]
    assert [f.name for f in loaded.of_entity("user")] == ["user", "age"]
    assert loaded["cross"].size == 600


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda f: setattr(f[0], "size", 0), "'user': categorical needs size"),
        (lambda f: setattr(f[1], "pooling", "max"), "'tags': pooling"),
        (lambda f: setattr(f[2], "entity", "session"), "'cross': entity"),
        (lambda f: setattr(f[3], "inputs", ["tower"]), "'age': inputs"),
        (lambda f: setattr(f[4], "inputs", ["deep"]), "'label': a label cannot"),
        (lambda f: setattr(f[3], "name", "user"), "'user' appears twice"),
    ],
)
def test_broken_contract_names_the_feature(mutate, fragment: str) -> None:
    spec = _spec()
    mutate(spec.features)
    with pytest.raises(FeatureSpecError, match=fragment):
        spec.validate()


def test_unknown_version_and_missing_file_are_refused(tmp_path: Path) -> None:
    data = _spec().to_dict()
    data["version"] = 99
    with pytest.raises(FeatureSpecError, match="version 99"):
        FeatureSpec.from_dict(data)
    with pytest.raises(FeatureSpecError, match="no feature spec"):
        FeatureSpec.load(tmp_path)
    with pytest.raises(FeatureSpecError, match="item_id 'nope'"):
        _spec(item_id="nope")
