"""Structured-config schemas behind every YAML file under `conf/`.

Each config group option starts from a `base_<option>` dataclass stored here (Hydra's
"structured config schema" pattern): the YAML file lists `base_<option>` first in its
defaults, so keys and types are checked when the config is composed. Primary configs
(`generate`, `train`, ...) have a schema too, so a misspelt top-level key fails as well.
Group nodes are typed `Any` in the primary schemas: the option's own schema validates them.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from recsys.export.blend import BlendSettings

# --------------------------------------------------------------------------- paths


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "${paths.root_dir}/data"
    # the run directory Hydra made for this run (outputs/<task>/runs/<time>/ or a sweep job dir)
    output_dir: str = "${hydra:runtime.output_dir}"


# ------------------------------------------------------------------------ datasets


@dataclass
class DatasetConfig:
    name: str = MISSING


@dataclass
class RecSys2021DummyConfig(DatasetConfig):
    """The seeded RecSys 2021 generator (docs/generator.md explains every knob)."""

    name: str = "recsys2021_dummy"
    rows: int = 100_000
    test_fraction: float = 0.1
    signal: float = 1.0
    personal_exposure: float = 0.6
    follows_per_user: int = 32
    num_users: int = 20_000
    num_tweets: int = 50_000
    num_hashtags: int = 5_000
    num_domains: int = 1_000
    num_languages: int = 66
    num_text_tokens: int = 30_000
    zipf_user_activity: float = 1.0
    zipf_authors: float = 1.1
    zipf_tweets: float = 0.9
    zipf_hashtags: float = 1.1
    zipf_domains: float = 1.2
    zipf_languages: float = 1.5


@dataclass
class SideTableConfig:
    """A user table or item catalogue joined by `key` to the interactions in preprocessing
    (recsys/features/side_tables.py)."""

    path: str = MISSING
    key: str = MISSING  # declared here and in the interactions' columns, with the same type
    format: str = "parquet"  # parquet | csv
    sep: str = ","  # csv only
    header: bool = True  # csv only
    # column name -> type, the key included (csv: every column, in file order)
    columns: dict[str, str] = field(default_factory=dict)
    # an interaction whose key is not in the table: error | null (its side columns null)
    missing_keys: str = "error"


@dataclass
class TableDatasetConfig(DatasetConfig):
    """Any table on disk with declared columns (docs/features.md, "Bring your own table")."""

    name: str = "table"
    # a file, a directory of files, or a directory with train/ (valid/, test/) inside
    path: str = MISSING
    format: str = "parquet"  # parquet | csv
    sep: str = ","  # csv only
    header: bool = True  # csv only
    # column name -> string | int64 | float64 | bool, or (parquet) list<string> | list<int64>
    # (csv: every column, in file order)
    columns: dict[str, str] = field(default_factory=dict)
    time_column: str | None = None  # orders rows for split=time and the feature tables
    users: SideTableConfig | None = None  # a user table joined on its key
    items: SideTableConfig | None = None  # an item catalogue joined on its key


@dataclass
class RecSys2021Config(TableDatasetConfig):
    """Raw RecSys 2021 data on disk: the real challenge data or the generator's output."""

    name: str = "recsys2021"
    path: str = "${paths.data_dir}/recsys2021"
    format: str = "parquet"
    time_column: str | None = "tweet_timestamp"


@dataclass
class CriteoConfig(TableDatasetConfig):
    """Criteo display-ads logs: label, I1..I13, C1..C26, tab-separated, no header."""

    name: str = "criteo"
    path: str = "${paths.data_dir}/criteo"
    format: str = "csv"
    sep: str = "\t"
    header: bool = False


# ------------------------------------------------------------------------ features


@dataclass
class FeatureOutputConfig:
    """How one output column enters the FeatureSpec."""

    entity: str | None = None  # user | item | context (null only for the label)
    inputs: list[str] = field(default_factory=list)  # wide | deep | user_tower | item_tower
    pooling: str | None = None  # multi-valued features: mean (default) | sum


@dataclass
class FeaturesConfig:
    """A FeaturePipeline: ordered steps (`op: <name>` + parameters) and the outputs kept."""

    name: str = MISSING
    # step name -> {op: fill | cast | ... , params}; checked by recsys.features.ops.build_op
    steps: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, FeatureOutputConfig] = field(default_factory=dict)
    label: str | None = None
    user_id: str | None = None
    item_id: str | None = None
    # free-form knobs for steps to interpolate (${features.params.<name>}) in your own configs
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecSys2021WndFeaturesConfig(FeaturesConfig):
    name: str = "recsys2021_wnd"
    cross_sizes: int = 600
    min_freq: int = 1


@dataclass
class RecSys2021TwoTowerFeaturesConfig(FeaturesConfig):
    name: str = "recsys2021_two_tower"
    min_freq: int = 1


@dataclass
class CriteoFeaturesConfig(FeaturesConfig):
    name: str = "criteo"
    min_freq: int = 10


@dataclass
class RatingsFeaturesConfig(FeaturesConfig):
    name: str = "ratings"
    min_freq: int = 1
    negatives: int = 4


# -------------------------------------------------------------------------- models


@dataclass
class ModelConfig:
    """Knobs shared by every model; `recsys.models.build_model(cfg.model, spec)` builds one
    (each constructor takes these as keyword arguments; sizes come from the FeatureSpec)."""

    _target_: str = MISSING
    embedding_dim: int = 8
    # per-feature embedding sizes overriding embedding_dim; add entries with a `+`:
    # `+model.embedding_dims.tweet_id=16` ({} = none)
    embedding_dims: dict[str, int] = field(default_factory=dict)
    # sparse gradients for embedding tables (needs SparseAdam/Adagrad/SGD on those weights)
    sparse: bool = False


@dataclass
class WideDeepConfig(ModelConfig):
    _target_: str = "recsys.models.wide_deep.WideDeep"
    hidden_units: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.0
    batch_norm: bool = False
    embedding_l2: float = 1000.0


@dataclass
class DeepFMConfig(ModelConfig):
    _target_: str = "recsys.models.deepfm.DeepFM"
    hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.0
    batch_norm: bool = False
    wide_first_order: bool = True
    embedding_l2: float = 1000.0


@dataclass
class LogisticConfig:
    """Logistic regression over the rankers' features; no embedding sizes (its tables are
    1 wide), so it does not take ModelConfig's knobs."""

    _target_: str = "recsys.models.logistic.LogisticRegression"
    inputs: list[str] = field(default_factory=lambda: ["wide", "deep"])
    sparse: bool = False
    embedding_l2: float = 10.0


class LogQ(Enum):
    estimate = "estimate"
    none = "none"


@dataclass
class TwoTowerConfig(ModelConfig):
    _target_: str = "recsys.models.two_tower.TwoTower"
    embedding_dim: int = 16
    tower_units: list[int] = field(default_factory=lambda: [1024, 512, 128])
    temperature: float = 0.05
    learn_temperature: bool = False
    loss: str = "in_batch"
    dropout: float = 0.0
    batch_norm: bool = False
    log_q: LogQ = LogQ.estimate  # logQ correction of the in-batch softmax (or none)
    mask_user_positives: bool = False  # the query user's other positives are no negatives
    share_history_embedding: bool = True  # user-history lists pool the item tower's table
    hide_own_history: bool = True  # training hides the row's own value from its history
    embedding_l2: float = 0.0  # L2 prior on the embedding tables (per training row)


# ------------------------------------------------------------------------ backends


@dataclass
class BackendConfig:
    name: str = MISSING
    num_workers: int = 1
    cpus_per_worker: int = 1
    ipex: bool = False


@dataclass
class LocalBackendConfig(BackendConfig):
    name: str = "local"


@dataclass
class RayBackendConfig(BackendConfig):
    name: str = "ray"
    num_workers: int = 2
    address: str | None = None
    max_failures: int = 1


# ------------------------------------------------------------------------- trainer


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"


class Optimizer(Enum):
    adam = "adam"
    adamw = "adamw"


class LrSchedule(Enum):
    none = "none"
    cosine = "cosine"


class MetricMode(Enum):
    max = "max"
    min = "min"


@dataclass
class TrainerConfig:
    epochs: int = 8
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 3e-3
    optimizer: Optimizer = Optimizer.adam
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = LrSchedule.cosine
    early_stopping_metric: str = "auto"
    early_stopping_mode: MetricMode = MetricMode.max
    patience: int = 2
    retrieval_k: int = 50
    max_steps_per_epoch: int | None = None


# ----------------------------------------------------------------- primary configs


@dataclass
class GenerateConfig:
    task_name: str = "generate"
    rows: int = II("dataset.rows")
    signal: float = II("dataset.signal")
    seed: int = 0
    out: str = "${paths.data_dir}/recsys2021"
    overwrite: bool = False
    partitions: int | None = None
    workers: int | None = None
    dataset: Any = MISSING
    paths: Any = MISSING


@dataclass
class SplitConfig:
    method: str = "random"  # random | time | per_user_time (recsys/features/split.py)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    time_column: str | None = None  # null: the dataset's time_column
    user_column: str | None = None  # per_user_time; null: the features' user_id
    absent: list[str] = field(default_factory=list)  # [test]: no test split, on purpose


@dataclass
class SparkConfig:
    master: str = "local[*]"
    cores: int | None = None
    app_name: str = "recsys-preprocess"
    driver_memory: str = "4g"
    jvm_options: str = ""
    class_cache: bool = False
    class_cache_write: bool = False
    class_cache_dir: str | None = None
    shuffle_partitions: int | None = None
    log_level: str = "WARN"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    task_name: str = "preprocess"
    data: str | None = None
    out: str = "${paths.data_dir}/${features.name}"
    overwrite: bool = False
    seed: int = 0
    tables: bool = True
    split: SplitConfig = field(default_factory=SplitConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    dataset: Any = MISSING
    features: Any = MISSING
    paths: Any = MISSING


@dataclass
class TrainConfig:
    task_name: str = "train"
    data: str = "${paths.data_dir}/recsys2021_wnd"
    seed: int = 0
    precision: Precision = Precision.fp32
    resume: bool = False
    model: Any = MISSING
    backend: Any = MISSING
    trainer: Any = MISSING
    paths: Any = MISSING


@dataclass
class IndexConfig:
    """The Faiss item index of a bundle (recsys.export.index.IndexSettings mirrors it)."""

    type: str = "hnsw"  # flat | hnsw | ivfpq
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 512
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int | None = None
    pq_nbits: int = 8
    refine: int | None = None
    recall_k: int = 100
    recall_users: int = 1000
    min_recall: float | None = None
    seed: int = 0


@dataclass
class ExportConfig:
    task_name: str = "export"
    ranker_run: str = MISSING
    retrieval_run: str = MISSING
    out: str = "bundles/demo"
    format: str = "torchscript"
    overwrite: bool = False
    embed_batch_size: int = 8192
    example_rows: int = 256
    index: IndexConfig = field(default_factory=IndexConfig)
    # the settings class itself: no mirror to keep in step
    blend: BlendSettings = field(default_factory=BlendSettings)
    paths: Any = MISSING


@dataclass
class EvaluateConfig:
    task_name: str = "evaluate"
    bundle: str = "bundles/demo"
    data: str | None = None
    split: str = "test"
    k: list[int] = field(default_factory=lambda: [10, 50])
    candidates: int = 200
    max_users: int | None = 2000
    batch_size: int = 256
    seed: int = 0
    out: str = "${paths.output_dir}/evaluation.json"
    exclude_train: bool = True
    knn_neighbours: int = 100
    paths: Any = MISSING


@dataclass
class ServeTlsConfig:
    """Server TLS (PEM files); all null = plaintext. `client_ca` set = client certificates
    are required and checked against it."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None


@dataclass
class ServeRemoteConfig:
    """Targets (host:port) of services the recommender calls over gRPC; null = in-process."""

    recall: str | None = None
    ranking: str | None = None
    feature: str | None = None


@dataclass
class ServeConfig:
    """`python -m serving.server` (conf/serve.yaml describes every key; docs/serving.md)."""

    task_name: str = "serve"
    bundle: str = "bundles/demo"
    host: str = "127.0.0.1"
    port: int = 50051
    services: list[str] = field(
        default_factory=lambda: ["recommender", "recall", "ranking", "feature", "admin"]
    )
    ports: dict[str, int] = field(default_factory=dict)
    remote: ServeRemoteConfig = field(default_factory=ServeRemoteConfig)
    feature_store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "recsys"
    max_k: int = 100
    candidate_count: int = 200
    max_candidates: int = 1000
    deadline_ms: int = 1000
    max_concurrent: int = 64
    max_message_bytes: int = 4 * 1024 * 1024
    workers: int = 2
    torch_threads: int | None = None
    ranker_threads: int | None = None
    faiss_threads: int = 1
    user_vector_table_mb: float = 512.0
    max_rank_batch: int = 512
    warmup_requests: int = 3
    grace_seconds: float = 5.0
    metrics_port: int | None = 9464
    tls: ServeTlsConfig = field(default_factory=ServeTlsConfig)
    paths: Any = MISSING


@dataclass
class PipelineOverrides:
    """Extra Hydra overrides per stage, e.g. {export: ["index.type=flat"]}."""

    preprocess: list[str] = field(default_factory=lambda: ["spark.log_level=ERROR"])
    train_ranker: list[str] = field(default_factory=list)
    train_retrieval: list[str] = field(default_factory=list)
    train_baseline: list[str] = field(default_factory=list)
    export: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=list)
    serve: list[str] = field(default_factory=list)


@dataclass
class SmokeConfig:
    """The Recommend requests the pipeline sends to its live server."""

    users: int = 3
    k: int = 10
    unknown_user: str = "unknown-user"


@dataclass
class PipelineStages:
    rows: int = 100_000
    work_dir: str = "${paths.data_dir}/demo"
    ranker_features: str = "recsys2021_wnd"
    retrieval_features: str = "recsys2021_two_tower"
    retrieval_model: str = "two_tower"
    # a model trained beside the ranker on its features, the baseline it must beat (null: none)
    baseline_model: str | None = "logistic"
    # stages to run, in this order; a later stage needs the earlier ones' outputs
    stages: list[str] = field(
        default_factory=lambda: [
            "generate",
            "features",
            "train",
            "export",
            "evaluate",
            "serve",
        ]
    )
    overrides: PipelineOverrides = field(default_factory=PipelineOverrides)
    smoke: SmokeConfig = field(default_factory=SmokeConfig)


@dataclass
class PipelineConfig:
    task_name: str = "pipeline"
    seed: int = 0
    resume: bool = True
    precision: Precision = Precision.fp32
    pipeline: PipelineStages = field(default_factory=PipelineStages)
    dataset: Any = MISSING
    model: Any = MISSING
    backend: Any = MISSING
    trainer: Any = MISSING
    paths: Any = MISSING


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; call before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="base_generate", node=GenerateConfig)
    cs.store(name="base_train", node=TrainConfig)
    cs.store(name="base_export", node=ExportConfig)
    cs.store(name="base_evaluate", node=EvaluateConfig)
    cs.store(name="base_serve", node=ServeConfig)
    cs.store(name="base_pipeline", node=PipelineConfig)
    cs.store(name="base_preprocess", node=PreprocessConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
    cs.store(group="dataset", name="base_recsys2021_dummy", node=RecSys2021DummyConfig)
    cs.store(group="dataset", name="base_recsys2021", node=RecSys2021Config)
    cs.store(group="dataset", name="base_criteo", node=CriteoConfig)
    cs.store(group="dataset", name="base_table", node=TableDatasetConfig)
    cs.store(group="features", name="base_features", node=FeaturesConfig)
    cs.store(group="features", name="base_recsys2021_wnd", node=RecSys2021WndFeaturesConfig)
    cs.store(
        group="features", name="base_recsys2021_two_tower", node=RecSys2021TwoTowerFeaturesConfig
    )
    cs.store(group="features", name="base_criteo", node=CriteoFeaturesConfig)
    cs.store(group="features", name="base_ratings", node=RatingsFeaturesConfig)
    cs.store(group="model", name="base_wide_deep", node=WideDeepConfig)
    cs.store(group="model", name="base_deepfm", node=DeepFMConfig)
    cs.store(group="model", name="base_logistic", node=LogisticConfig)
    cs.store(group="model", name="base_two_tower", node=TwoTowerConfig)
    cs.store(group="backend", name="base_local", node=LocalBackendConfig)
    cs.store(group="backend", name="base_ray", node=RayBackendConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
