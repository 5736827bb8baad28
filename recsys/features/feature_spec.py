"""FeatureSpec: the one description of processed features that models, export and serving read.

Saved as `feature_spec.json` next to the processed data (DESIGN.md, "Contracts"). Models never
hard-code column names or sizes: they read them from here.

Column contract of the processed parquet, per feature kind:

| kind              | parquet column                     | batch tensor        | `size`         |
|-------------------|------------------------------------|---------------------|----------------|
| categorical       | int64 index                        | B (int64)           | embedding rows |
| hashed, cross     | int64 index                        | B (int64)           | embedding rows |
| multi_categorical | list<int64>, 0-padded to max_len   | B x max_len (int64) | embedding rows |
| continuous        | float32                            | B (float32)         | None           |
| label             | float32 0/1                        | B (float32)         | None           |

Every index lies in `[0, size)`. Index 0 means missing (and padding); for vocabularies index 1
is "unknown" and known values start at 2 in descending frequency (DESIGN.md, "Encoding").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

FEATURE_SPEC_VERSION = 1
FEATURE_SPEC_FILE = "feature_spec.json"

KINDS = ("categorical", "multi_categorical", "hashed", "cross", "continuous", "label")
INDEX_KINDS = ("categorical", "multi_categorical", "hashed", "cross")
ENTITIES = ("user", "item", "context")
MODEL_INPUTS = ("wide", "deep", "user_tower", "item_tower")
POOLINGS = ("mean", "sum")


class FeatureSpecError(RecsysError, ValueError):
    """A spec that breaks the contract; the message names the feature and the field."""


@dataclass
class Feature:
    """One processed column."""

    name: str
    kind: str
    source: list[str]
    entity: str | None = None  # user | item | context; None for labels
    inputs: list[str] = field(default_factory=list)  # subset of MODEL_INPUTS
    size: int | None = None  # embedding rows for index kinds (all indices in [0, size))
    max_len: int | None = None  # multi_categorical only: padded list length
    pooling: str | None = None  # multi_categorical only: mean | sum
    stats: dict[str, Any] = field(default_factory=dict)  # fitted statistics (min/max, bins...)
    vocabulary: str | None = None  # vocabulary file, relative to the spec's directory

    @property
    def is_index(self) -> bool:
        return self.kind in INDEX_KINDS

    def validate(self) -> None:
        where = f"feature {self.name!r}"
        if not self.name:
            raise FeatureSpecError("a feature has an empty name")
        if self.kind not in KINDS:
            raise FeatureSpecError(f"{where}: kind {self.kind!r} is not one of {KINDS}")
        if not self.source:
            raise FeatureSpecError(f"{where}: source lists no raw column")
        if self.kind != "label" and self.entity not in ENTITIES:
            raise FeatureSpecError(f"{where}: entity {self.entity!r} is not one of {ENTITIES}")
        unknown = set(self.inputs) - set(MODEL_INPUTS)
        if unknown:
            raise FeatureSpecError(f"{where}: inputs {sorted(unknown)} not in {MODEL_INPUTS}")
        if self.is_index and (not isinstance(self.size, int) or self.size < 1):
            raise FeatureSpecError(f"{where}: {self.kind} needs size >= 1, got {self.size!r}")
        if self.kind == "multi_categorical":
            if not isinstance(self.max_len, int) or self.max_len < 1:
                raise FeatureSpecError(f"{where}: multi_categorical needs max_len >= 1")
            if self.pooling not in POOLINGS:
                raise FeatureSpecError(f"{where}: pooling {self.pooling!r} not in {POOLINGS}")
        if self.kind == "label" and self.inputs:
            raise FeatureSpecError(f"{where}: a label cannot be a model input")


@dataclass
class FeatureSpec:
    """All processed features of a data set, with the ids that serving looks up by."""

    features: list[Feature]
    label: str | None = None  # name of the label feature models train on
    user_id: str | None = None  # name of the feature holding the encoded user id
    item_id: str | None = None  # name of the feature holding the encoded item id
    dataset: str = ""
    version: int = FEATURE_SPEC_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ queries

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r} in the spec")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def for_input(self, model_input: str) -> list[Feature]:
        """Features that `model_input` (wide, deep, user_tower, item_tower) uses, in spec order."""
        if model_input not in MODEL_INPUTS:
            raise FeatureSpecError(f"model input {model_input!r} is not one of {MODEL_INPUTS}")
        return [f for f in self.features if model_input in f.inputs]

    def of_entity(self, entity: str) -> list[Feature]:
        return [f for f in self.features if f.entity == entity]

    # --------------------------------------------------------------- validation

    def validate(self) -> None:
        if self.version != FEATURE_SPEC_VERSION:
            raise FeatureSpecError(
                f"feature spec version {self.version} is not supported "
                f"(this code reads version {FEATURE_SPEC_VERSION})"
            )
        seen: set[str] = set()
        for feature in self.features:
            feature.validate()
            if feature.name in seen:
                raise FeatureSpecError(f"feature {feature.name!r} appears twice")
            seen.add(feature.name)
        for role in ("label", "user_id", "item_id"):
            name = getattr(self, role)
            if name is not None and name not in seen:
                raise FeatureSpecError(f"{role} {name!r} is not a feature of the spec")
        if self.label is not None and self[self.label].kind != "label":
            raise FeatureSpecError(f"label {self.label!r} has kind {self[self.label].kind!r}")

    # -------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        try:
            features = [Feature(**f) for f in data["features"]]
            rest = {k: v for k, v in data.items() if k != "features"}
            return cls(features=features, **rest)
        except (KeyError, TypeError) as e:
            raise FeatureSpecError(f"malformed feature spec: {e}") from e

    def save(self, directory: str | Path) -> Path:
        """Write `feature_spec.json` into `directory` atomically; return its path."""
        from recsys.provenance import write_json_atomic

        path = Path(directory) / FEATURE_SPEC_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Read a spec from a `feature_spec.json` file or the directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / FEATURE_SPEC_FILE
        if not path.is_file():
            raise FeatureSpecError(f"no feature spec at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FeatureSpecError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data)
