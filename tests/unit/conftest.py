"""Small FeatureSpecs for the model tests, built in code."""

import pytest

from recsys.features.feature_spec import Feature, FeatureSpec


def full_spec() -> FeatureSpec:
    """Every feature kind and every model input, both poolings, shared and exclusive features."""
    features = [
        Feature("user", "categorical", ["enaging_user_id"], "user", ["deep", "user_tower"], 11),
        Feature("user_bin", "categorical", ["f"], "user", ["deep", "user_tower", "wide"], 5),
        Feature("item", "categorical", ["tweet_id"], "item", ["deep", "item_tower"], 13),
        Feature("media", "categorical", ["present_media"], "item", ["wide", "item_tower"], 6),
        Feature(
            "tags", "multi_categorical", ["hashtags"], "item", ["deep", "item_tower"], 9, 4, "mean"
        ),
        Feature(
            "links", "multi_categorical", ["present_links"], "item", ["deep", "wide"], 7, 3, "sum"
        ),
        Feature("token", "hashed", ["text_tokens"], "item", ["deep"], 16),
        Feature("media_x_lang", "cross", ["present_media", "language"], "item", ["wide"], 20),
        Feature(
            "age",
            "continuous",
            ["x"],
            "user",
            ["deep", "user_tower", "wide"],
            stats={"min": 0.0, "max": 1.0},
        ),
        Feature("length", "continuous", ["y"], "item", ["deep", "item_tower"]),
        Feature("follows", "continuous", ["engagee_follows_engager"], "context", ["deep"]),
        Feature("label", "label", ["like_timestamp"]),
    ]
    return FeatureSpec(features=features, label="label", user_id="user", item_id="item")


def minimal_spec() -> FeatureSpec:
    """One single-valued index feature per input: no wide part, no lists, no dense vector."""
    features = [
        Feature("user", "categorical", ["u"], "user", ["deep", "user_tower"], 8),
        Feature("item", "categorical", ["i"], "item", ["deep", "item_tower"], 8),
        Feature("label", "label", ["l"]),
    ]
    return FeatureSpec(features=features, label="label", user_id="user", item_id="item")


@pytest.fixture
def spec() -> FeatureSpec:
    return full_spec()


@pytest.fixture(params=["full", "minimal"])
def any_spec(request: pytest.FixtureRequest) -> FeatureSpec:
    return full_spec() if request.param == "full" else minimal_spec()
