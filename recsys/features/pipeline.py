"""FeaturePipeline: ordered operations from a `features=<name>` config; fit, transform, save, load.

    pipeline = FeaturePipeline.from_config(cfg.features, raw_columns=cfg.dataset.columns)
    train_out = pipeline.fit_transform(train_df)       # Spark, learns state on train only
    test_out = pipeline.transform(test_df)             # Spark, train's state
    batch = pipeline.transform_batch(rows)             # pyarrow, no Spark (serving)
    pipeline.save(dir); FeaturePipeline.load(dir)      # JSON + parquet vocabularies
    spec = pipeline.feature_spec()                     # the FeatureSpec of the outputs

Inputs are raw rows with the declared column types (columns.py coerces what arrives); outputs
are exactly the configured `outputs`, in order, typed by the FeatureSpec column contract
(int64 indices, list<int64> padded lists, float32 continuous values and labels); a value
still missing at the end (a raw numeric column with nulls) becomes 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from recsys.features.columns import (
    FeatureError,
    MissingColumnError,
    check_declared,
    coerce_spark,
    coerce_table,
    rows_to_table,
)
from recsys.features.feature_spec import (
    ENTITIES,
    INDEX_KINDS,
    MODEL_INPUTS,
    POOLINGS,
    Feature,
    FeatureSpec,
)
from recsys.features.ops import Aggregated, Op, aggregate, build_op, op_config
from recsys.features.sql import ident
from recsys.features.vocabulary import Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PIPELINE_FORMAT = 1
PIPELINE_FILE = "pipeline.json"
VOCAB_DIR = "vocabularies"


@dataclass
class OutputConfig:
    """How one output column enters the FeatureSpec (config `outputs.<name>`)."""

    entity: str | None = None  # user | item | context; null only for the label
    inputs: list[str] = field(default_factory=list)  # wide, deep, user_tower, item_tower
    pooling: str | None = None  # multi-valued features: mean (default) or sum

    def validate(self, name: str) -> None:
        if self.entity is not None and self.entity not in ENTITIES:
            raise FeatureError(f"outputs.{name}.entity {self.entity!r} not in {ENTITIES}")
        bad = sorted(set(self.inputs) - set(MODEL_INPUTS))
        if bad:
            raise FeatureError(f"outputs.{name}.inputs {bad} not in {MODEL_INPUTS}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise FeatureError(f"outputs.{name}.pooling {self.pooling!r} not in {POOLINGS}")


class FeaturePipeline:
    """An ordered list of operations and the outputs they make."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Op],
        outputs: Mapping[str, OutputConfig],
        raw_columns: Mapping[str, str],
        label: str | None = None,
        user_id: str | None = None,
        item_id: str | None = None,
    ) -> None:
        self.name = name
        self.steps = list(steps)
        self.outputs = dict(outputs)
        self.label, self.user_id, self.item_id = label, user_id, item_id
        self.sources = self._trace(raw_columns)
        self._check_sampling_order(raw_columns)
        needed = self._raw_inputs(raw_columns)
        self.raw_columns = {c: raw_columns[c] for c in raw_columns if c in needed}
        check_declared(self.raw_columns)
        for role in ("label", "user_id", "item_id"):
            value = getattr(self, role)
            if value is not None and value not in self.outputs:
                raise FeatureError(f"features.{role} {value!r} is not one of the outputs")

    # ------------------------------------------------------------------ config

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], raw_columns: Mapping[str, str]) -> FeaturePipeline:
        """From a `features` config node (plain mapping) and the dataset's declared columns."""
        cfg = _plain(cfg)
        steps = [build_op(name, step) for name, step in (cfg.get("steps") or {}).items()]
        outputs = {}
        for name, out in (cfg.get("outputs") or {}).items():
            try:
                outputs[name] = OutputConfig(**(out or {}))
            except TypeError as e:
                raise FeatureError(f"outputs.{name}: {e}") from e
            outputs[name].validate(name)
        if not outputs:
            raise FeatureError(f"features {cfg.get('name')!r} lists no outputs")
        return cls(
            cfg.get("name", ""),
            steps,
            outputs,
            _plain(raw_columns),
            label=cfg.get("label"),
            user_id=cfg.get("user_id"),
            item_id=cfg.get("item_id"),
        )

    def _trace(self, raw_columns: Mapping[str, str]) -> dict[str, list[str]]:
        """Raw source columns of every column that exists after the last step."""
        sources: dict[str, list[str]] = {c: [c] for c in raw_columns}
        for step in self.steps:
            for column in step.inputs():
                if column not in sources:
                    raise MissingColumnError(
                        f"step {step.name!r} ({step.op}) reads column {column!r}, which is "
                        "neither a declared dataset column nor written by an earlier step"
                    )
            for out, ins in step.lineage().items():
                sources[out] = list(dict.fromkeys(s for i in ins for s in sources[i]))
        for name in self.outputs:
            if name not in sources:
                raise MissingColumnError(
                    f"output {name!r} is neither a declared dataset column nor written by a step"
                )
        return sources

    def _check_sampling_order(self, raw_columns: Mapping[str, str]) -> None:
        """Refuse step orders around `negative_sample` that Spark would only trip over late,
        or never: the step adds rows to training data only, copying the positive row's columns
        except the item, its `item_columns` and the label.

        - its label must exist before it (a label step or a dataset column): valid and test
          rows would otherwise have none, and the job fails in Spark minutes later;
        - no later step may rewrite that label: the negatives would be relabelled from the
          columns they copied from their positive;
        - every item output must reach the negatives from the sampled item (the item column,
          its item_columns, or later steps' results of those): anything else keeps the
          positive item's value on a negative row.
        """
        for k, step in enumerate(self.steps):
            if step.op != "negative_sample":
                continue
            where = f"step {step.name!r} (negative_sample)"
            label = step.params.label
            before = set(raw_columns).union(*(s.lineage() for s in self.steps[:k]))
            later = self.steps[k + 1 :]
            used = label in self.outputs or any(label in s.inputs() for s in later)
            if label not in before and used:
                raise FeatureError(
                    f"{where} needs its label column {label!r} from an earlier step (op: label) "
                    "or the dataset: it adds the label to training rows only, so valid and "
                    "test rows would have none"
                )
            relabel = next((s for s in later if label in s.lineage()), None)
            if relabel is not None:
                raise FeatureError(
                    f"step {relabel.name!r} ({relabel.op}) rewrites {label!r} after {where}: "
                    "the sampled negatives would be relabelled from their positive's columns; "
                    "put it before"
                )
            carried = {step.params.item, *step.params.item_columns}
            for s in later:
                for out, ins in s.lineage().items():
                    if all(i in carried for i in ins):
                        carried.add(out)
                    else:
                        carried.discard(out)
            for name, out in self.outputs.items():
                if out.entity == "item" and name not in carried:
                    raise FeatureError(
                        f"output {name!r} (entity item) is not taken from the sampled item by "
                        f"{where}: list it, or the columns it is made from, in the step's "
                        "item_columns, else negative rows keep the positive item's value"
                    )

    def _raw_inputs(self, raw_columns: Mapping[str, str]) -> set[str]:
        needed = {c for step in self.steps for c in step.inputs() if c in raw_columns}
        needed |= {s for name in self.outputs for s in self.sources[name]}
        # a raw column read only after a step rewrote it is still needed in its raw form
        return needed

    def writer(self, column: str) -> Op | None:
        """The last step that writes `column` (None for a raw column passed through)."""
        for step in reversed(self.steps):
            if column in step.lineage():
                return step
        return None

    @property
    def fitted(self) -> bool:
        return all(step.fitted for step in self.steps)

    # ------------------------------------------------------------------ Spark

    def fit(self, df: DataFrame) -> FeaturePipeline:
        """Fit every step on `df` (training rows), each on the rows as the steps before it
        leave them (training transforms: out-of-fold means, sampled negatives).

        Steps are fitted in batches to keep Spark jobs few: a batch runs until a step reads a
        column that a stateful step of the batch writes (it needs that step fitted first), or
        writes a column one of them reads. The statistics of a batch (vocabularies, counts,
        target means, min and max) all come from one Spark job (`ops.aggregate`).

        Steps after the last stateful one learn nothing (they are fitted as built), so the
        rows are not carried through them: their input checks run when they transform.
        (Building those plans only to drop them cost about 1 s per fit on the W&D features.)
        """
        frame = coerce_spark(df, self._spark_columns(df, ()), "training data")
        learning = [i for i, step in enumerate(self.steps) if step.stateful]
        end = learning[-1] + 1 if learning else 0  # the steps from here on learn nothing
        i = 0
        while i < end:
            batch = self._next_batch(i)
            self._fit_batch(batch, frame)
            i += len(batch)
            if i < end:
                for step in batch:
                    frame = step.transform_train(frame)
        return self

    def _next_batch(self, start: int) -> list[Op]:
        batch: list[Op] = []
        written: set[str] = set()  # by stateful steps of the batch
        read: set[str] = set()  # by stateful steps of the batch
        for step in self.steps[start:]:
            writes = set(step.lineage())
            if batch and (set(step.inputs()) & written or (writes & read and not step.stateful)):
                break
            batch.append(step)
            if step.stateful:
                written |= writes
                read |= set(step.inputs())
            if step.train_specific:
                break  # later steps fit on the rows it produces
        return batch

    def _fit_batch(self, batch: list[Op], frame: DataFrame) -> None:
        """Fit the stateful steps of `batch` on `frame` with its stateless steps applied."""
        stateful = [s for s in batch if s.stateful]
        if not stateful:
            for step in batch:
                step.fit(frame)
                frame = step.transform_train(frame)
            return
        aggregated = [s for s in stateful if isinstance(s, Aggregated)]
        for step in batch:
            if not step.stateful:
                step.fit(frame)
                frame = step.transform(frame)
            else:
                step.check_spark(frame)
        if aggregated:
            pieces = [piece for s in aggregated for piece in s.agg_pieces()]
            table = aggregate(frame, pieces, min(s.min_count() for s in aggregated))
            for step in aggregated:
                step.fit_aggregates(table)
                step.fitted = True
        for step in stateful:
            if step not in aggregated:
                step.fit(frame)

    @property
    def train_specific(self) -> bool:
        """True if training rows are transformed differently from other rows."""
        return any(step.train_specific for step in self.steps)

    def fit_transform(self, df: DataFrame, keep: Sequence[str] = ()) -> DataFrame:
        """Fit on `df` (training rows); return them processed."""
        self.fit(df)
        return self.transform(df, keep=keep, train=True)

    def transform(self, df: DataFrame, keep: Sequence[str] = (), train: bool = False) -> DataFrame:
        """Processed rows of `df` with the fitted state; `keep` passes extra columns through.

        `train=True` applies the training transforms (out-of-fold means, sampled negatives).
        """
        self._require_fitted()
        out = coerce_spark(df, self._spark_columns(df, keep), "data")
        for step in self.steps:
            out = step.transform_train(out) if train else step.transform(out)
        return self._select_spark(out, keep)

    def _spark_columns(self, df: DataFrame, keep: Sequence[str]) -> dict[str, str]:
        columns = dict(self.raw_columns)
        for name in keep:
            if name not in columns:
                if name not in df.columns:
                    raise MissingColumnError(f"data: missing column {name!r} (asked to keep it)")
                columns[name] = _logical_of(df, name)
        return columns

    def _select_spark(self, df: DataFrame, keep: Sequence[str]) -> DataFrame:
        exprs = []
        for name in self.outputs:
            kind, c = self._kind(name), ident(name)
            if kind in ("continuous", "label"):
                exprs.append(f"coalesce(CAST({c} AS FLOAT), CAST(0 AS FLOAT)) AS {c}")
            elif kind == "multi_categorical":
                exprs.append(f"CAST({c} AS ARRAY<BIGINT>) AS {c}")
            else:
                exprs.append(f"coalesce(CAST({c} AS BIGINT), 0L) AS {c}")
        exprs += [ident(k) for k in keep if k not in self.outputs]
        return df.selectExpr(*exprs)

    # ------------------------------------------------------------------ online

    def transform_batch(
        self, rows: pa.Table | list[dict[str, Any]], keep: Sequence[str] = ()
    ) -> pa.Table:
        """Processed rows of a batch of raw records or an Arrow table, without Spark.

        Steps that only serve training (labels, negative sampling) are skipped when their
        inputs are absent, as in a serving request; their outputs are then left out.
        """
        self._require_fitted()
        optional = {c for s in self.steps if s.optional_online() for c in s.inputs()}
        present = (
            set(rows.column_names)
            if isinstance(rows, pa.Table)
            else set().union(*(r.keys() for r in rows))
            if rows
            else set()
        )
        declared = {c: t for c, t in self.raw_columns.items() if c in present or c not in optional}
        if isinstance(rows, pa.Table):
            table = coerce_table(rows, declared, "batch")
            extra = {k: rows[k] for k in keep if k not in declared}
        else:
            table = rows_to_table(rows, declared, "batch")
            extra = {k: pa.array([r.get(k) for r in rows]) for k in keep if k not in declared}
        for step in self.steps:
            if step.optional_online() and not set(step.inputs()) <= set(table.column_names):
                continue
            table = step.transform_arrow(table)
        arrays, names = [], []
        for name in self.outputs:
            if name not in table.column_names:
                continue
            arrays.append(self._arrow_output(name, table[name]))
            names.append(name)
        for k in keep:
            if k not in names:
                arrays.append(table[k] if k in table.column_names else extra[k])
                names.append(k)
        return pa.Table.from_arrays(arrays, names=names)

    def _arrow_output(self, name: str, values: pa.ChunkedArray) -> pa.Array:
        kind = self._kind(name)
        values = values.combine_chunks()
        if kind in ("continuous", "label"):
            return values.cast(pa.float64()).fill_null(0.0).cast(pa.float32())
        if kind == "multi_categorical":
            return values.cast(pa.list_(pa.int64()))
        return values.cast(pa.int64()).fill_null(0)

    def _require_fitted(self) -> None:
        unfitted = [s.name for s in self.steps if not s.fitted]
        if unfitted:
            raise FeatureError(f"pipeline {self.name!r} is not fitted (steps {unfitted})")

    # ------------------------------------------------------------------ spec

    def _kind(self, name: str) -> str:
        step = self.writer(name)
        if step is None:
            kind = self.raw_columns.get(name)
            if kind in ("int64", "float64", "bool"):
                return "continuous"
            raise FeatureError(f"output {name!r} is a raw {kind} column; encode it to use it")
        return step.describe(name).kind

    def feature_spec(self, vocabulary_dir: str = VOCAB_DIR) -> FeatureSpec:
        """The FeatureSpec of the outputs; vocabulary paths are `vocabulary_dir/<file>`."""
        self._require_fitted()
        features = []
        for name, out in self.outputs.items():
            step = self.writer(name)
            if step is None:
                info_kind, size, max_len, stats, vocab = self._kind(name), None, None, {}, None
            else:
                info = step.describe(name)
                info_kind, size, max_len, stats = info.kind, info.size, info.max_len, info.stats
                vocab = (
                    f"{vocabulary_dir}/{_vocab_file(step.name, info.vocabulary)}"
                    if info.vocabulary
                    else None
                )
            pooling = out.pooling
            if info_kind == "multi_categorical" and pooling is None:
                pooling = "mean"
            features.append(
                Feature(
                    name=name,
                    kind=info_kind,
                    source=self.sources[name],
                    entity=None if info_kind == "label" else out.entity,
                    inputs=list(out.inputs),
                    size=size if info_kind in INDEX_KINDS else None,
                    max_len=max_len,
                    pooling=pooling if info_kind == "multi_categorical" else None,
                    stats=stats,
                    vocabulary=vocab,
                )
            )
        return FeatureSpec(
            features=features,
            label=self.label,
            user_id=self.user_id,
            item_id=self.item_id,
            dataset=self.name,
        )

    # ------------------------------------------------------------------ save

    def save(self, directory: str | Path) -> Path:
        """Write `pipeline.json` and `vocabularies/*.parquet` into `directory`."""
        self._require_fitted()
        directory = Path(directory)
        (directory / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
        steps = []
        for step in self.steps:
            files = {}
            for key, vocab in step.artifacts().items():
                files[key] = _vocab_file(step.name, key)
                vocab.save(directory / VOCAB_DIR / files[key])
            steps.append(
                {
                    "name": step.name,
                    "config": op_config(step),
                    "input_kinds": step.input_kinds,
                    "state": step.state(),
                    "vocabularies": files,
                }
            )
        data = {
            "format": PIPELINE_FORMAT,
            "name": self.name,
            "raw_columns": self.raw_columns,
            "steps": steps,
            "outputs": {
                name: {"entity": o.entity, "inputs": o.inputs, "pooling": o.pooling}
                for name, o in self.outputs.items()
            },
            "label": self.label,
            "user_id": self.user_id,
            "item_id": self.item_id,
        }
        from recsys.provenance import write_json_atomic

        write_json_atomic(directory / PIPELINE_FILE, data)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FeaturePipeline:
        """A fitted pipeline from a directory written by `save` (JSON and parquet only)."""
        directory = Path(directory)
        path = directory / PIPELINE_FILE
        if not path.is_file():
            raise FeatureError(f"no saved pipeline at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FeatureError(f"{path} is not valid JSON: {e}") from e
        if data.get("format") != PIPELINE_FORMAT:
            raise FeatureError(f"{path}: pipeline format {data.get('format')!r} is not supported")
        steps = []
        for entry in data["steps"]:
            step = build_op(entry["name"], entry["config"])
            step.input_kinds = dict(entry.get("input_kinds", {}))
            vocabs = {
                key: Vocabulary.load(directory / VOCAB_DIR / file)
                for key, file in entry.get("vocabularies", {}).items()
            }
            step.load_state(entry.get("state", {}), vocabs)
            steps.append(step)
        outputs = {name: OutputConfig(**o) for name, o in data["outputs"].items()}
        return cls(
            data["name"],
            steps,
            outputs,
            data["raw_columns"],
            label=data.get("label"),
            user_id=data.get("user_id"),
            item_id=data.get("item_id"),
        )


def _vocab_file(step: str, key: str) -> str:
    return f"{step}.{key}.parquet"


def _plain(node: Any) -> Any:
    """A Hydra/OmegaConf node as plain Python containers (dicts keep their order)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, DictConfig | ListConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return node


def _logical_of(df: DataFrame, name: str) -> str:
    from recsys.features.columns import spark_kind

    kind = spark_kind(df.schema[name].dataType)
    return {"string": "string", "integer": "int64", "float": "float64", "bool": "bool"}.get(
        kind, "string"
    )
