"""Input layers from a FeatureSpec: embeddings, pooled embeddings, dense vectors, linear terms.

Models never name a column: they ask the spec which features a model input uses
(`spec.for_input("deep")`, ...) and build one of these layers over them. The batch is a
`Dict[str, Tensor]` keyed by feature name, as the column contract in
`recsys.features.feature_spec` says: index features B (int64), multi_categorical
B x max_len (int64, 0-padded), continuous B (float32), label B (float32).

Index 0 (missing or padding):
- single-valued features (categorical, hashed, cross) learn a row for it: "missing" is a value
  and often an informative one;
- multi_categorical features pool with `nn.EmbeddingBag(padding_idx=0)`: padding contributes
  nothing, a mean divides by the number of non-padding entries, an all-padding row pools to 0.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recsys.features.feature_spec import Feature, FeatureSpec

EMBEDDING_INIT_BOUND = 0.05
"""Embeddings start uniform in [-0.05, 0.05] (the Keras default that Friesian's models use)."""

SINGLE_INDEX_KINDS = ("categorical", "hashed", "cross")


def as_feature_spec(spec: Any) -> FeatureSpec:
    """A FeatureSpec from a FeatureSpec, a (Omega)dict of one, or a path to `feature_spec.json`.

    `hydra.utils.instantiate(cfg.model, spec=spec)` merges its keyword arguments into the
    config, which turns the spec into a DictConfig; models call this to get it back.
    """
    if isinstance(spec, FeatureSpec):
        return spec
    if isinstance(spec, str | Path):
        return FeatureSpec.load(spec)
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        if OmegaConf.get_type(spec) is FeatureSpec:
            return OmegaConf.to_object(spec)
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping):
        return FeatureSpec.from_dict(dict(spec))
    raise TypeError(f"expected a FeatureSpec, a mapping or a path, got {type(spec).__name__}")


def check_embedding_dims(spec: FeatureSpec, embedding_dims: Mapping[str, int] | None) -> dict:
    """Per-feature embedding sizes as a plain dict; a name that is not an index feature fails."""
    dims = {str(k): int(v) for k, v in (embedding_dims or {}).items()}
    index_names = {f.name for f in spec.features if f.is_index}
    unknown = sorted(set(dims) - index_names)
    if unknown:
        raise ValueError(f"embedding_dims names {unknown}: not index features of the spec")
    bad = sorted(name for name, dim in dims.items() if dim < 1)
    if bad:
        raise ValueError(f"embedding_dims must be >= 1; got {[(n, dims[n]) for n in bad]}")
    return dims


def make_embedding(feature: Feature, dim: int, sparse: bool = False) -> nn.Module:
    """`nn.Embedding` for a single-valued index feature, pooled `nn.EmbeddingBag` for a list."""
    if not feature.is_index:
        raise ValueError(f"feature {feature.name!r} of kind {feature.kind!r} has no embedding")
    assert feature.size is not None
    if feature.kind == "multi_categorical":
        emb: nn.Module = nn.EmbeddingBag(
            feature.size, dim, mode=feature.pooling or "mean", padding_idx=0, sparse=sparse
        )
    else:
        emb = nn.Embedding(feature.size, dim, sparse=sparse)
    nn.init.uniform_(emb.weight, -EMBEDDING_INIT_BOUND, EMBEDDING_INIT_BOUND)
    if feature.kind == "multi_categorical":
        with torch.no_grad():
            emb.weight[0].zero_()
    return emb


def _check_names(features: Sequence[Feature]) -> None:
    for feature in features:
        if feature.kind == "label":
            raise ValueError(f"label {feature.name!r} cannot be a model input")
        if "." in feature.name:
            # nn.ModuleDict keys cannot hold dots
            raise ValueError(f"feature name {feature.name!r} contains '.'")


class InputLayer(nn.Module):
    """The features of one model input as vectors.

    Index features get an embedding each (`embedding_dim`, or `embedding_dims[name]` when
    given); continuous features are gathered, in spec order, into a dense B x C vector.

    forward(features) -> B x output_dim: the embeddings in spec order, then the dense vector.
    """

    # class-level annotations type the (possibly empty) lists for TorchScript
    embedding_names: list[str]
    embedding_sizes: list[int]
    dense_names: list[str]

    def __init__(
        self,
        features: Sequence[Feature],
        embedding_dim: int = 8,
        embedding_dims: Mapping[str, int] | None = None,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError("an input layer needs at least one feature")
        _check_names(features)
        dims = dict(embedding_dims or {})
        self.embeddings = nn.ModuleDict()
        self.embedding_names: list[str] = []
        self.embedding_sizes: list[int] = []
        self.dense_names: list[str] = []
        for feature in features:
            if feature.kind == "continuous":
                self.dense_names.append(feature.name)
                continue
            dim = int(dims.get(feature.name, embedding_dim))
            self.embeddings[feature.name] = make_embedding(feature, dim, sparse)
            self.embedding_names.append(feature.name)
            self.embedding_sizes.append(dim)
        self.num_dense = len(self.dense_names)
        self.output_dim = sum(self.embedding_sizes) + self.num_dense

    def embed(self, features: dict[str, Tensor]) -> list[Tensor]:
        """One B x d_i tensor per index feature, in spec order."""
        out: list[Tensor] = []
        for name, embedding in self.embeddings.items():
            out.append(embedding(features[name]))
        return out

    def dense(self, features: dict[str, Tensor]) -> Tensor:
        """The continuous features as B x C float32 (C >= 1; call only when num_dense > 0)."""
        return torch.stack([features[name] for name in self.dense_names], dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        parts = self.embed(features)
        if self.num_dense > 0:
            parts.append(self.dense(features))
        return torch.cat(parts, dim=1)


class LinearTerms(nn.Module):
    """First-order (wide) terms over a set of features; forward(features) -> B.

    A one-hot encoding times a weight vector is a lookup, so each index feature has a
    1-wide embedding table (multi_categorical: pooled with the spec's pooling, padding
    excluded); continuous features get a weight each. Weights start at zero.
    """

    def __init__(self, features: Sequence[Feature], sparse: bool = False, bias: bool = True):
        super().__init__()
        if not features:
            raise ValueError("linear terms need at least one feature")
        _check_names(features)
        index = [f for f in features if f.is_index]
        self.dense_names: list[str] = [f.name for f in features if f.kind == "continuous"]
        self.index: InputLayer | None = InputLayer(index, 1, sparse=sparse) if index else None
        self.dense_weight: nn.Linear | None = (
            nn.Linear(len(self.dense_names), 1, bias=False) if self.dense_names else None
        )
        for p in self.parameters():
            nn.init.zeros_(p)
        if bias:
            self.bias = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("bias", torch.zeros(1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        out = self.bias
        if self.index is not None:
            out = out + torch.cat(self.index.embed(features), dim=1).sum(dim=1)
        if self.dense_weight is not None:
            dense = torch.stack([features[name] for name in self.dense_names], dim=1)
            out = out + self.dense_weight(dense).squeeze(-1)
        return out


def embedding_tables(module: nn.Module) -> list[nn.Parameter]:
    """The weight of every embedding table in `module`, linear terms' 1-wide tables included;
    a table shared by two modules (a two-tower's item ids and user history) counts once."""
    tables: dict[int, nn.Parameter] = {}
    for m in module.modules():
        if isinstance(m, nn.Embedding | nn.EmbeddingBag):
            tables.setdefault(id(m.weight), m.weight)
    return list(tables.values())


def embedding_penalty(module: nn.Module) -> Tensor:
    """sum ||W||^2 over every embedding table of `module` (0-d): an L2 prior on the tables."""
    tables = embedding_tables(module)
    if not tables:
        return torch.zeros(())
    return torch.stack([w.pow(2).sum() for w in tables]).sum()


def split_sparse_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse) trainable parameters: sparse ones are the weights of embedding tables
    built with `sparse=True`, which need an optimizer that takes sparse gradients
    (`torch.optim.SparseAdam`, `Adagrad`, `SGD`)."""
    sparse_ids = {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse
    }
    params = [p for p in module.parameters() if p.requires_grad]
    return (
        [p for p in params if id(p) not in sparse_ids],
        [p for p in params if id(p) in sparse_ids],
    )


def random_batch(
    spec: FeatureSpec,
    batch_size: int,
    generator: torch.Generator | None = None,
    padding_fraction: float = 0.3,
) -> dict[str, Tensor]:
    """A batch that follows the column contract, with random values: index features uniform
    in [0, size), list entries padded with 0 at random (`padding_fraction`), continuous
    uniform in [0, 1), labels 0/1. For tests, smoke runs and benchmarks."""
    batch: dict[str, Tensor] = {}
    for f in spec.features:
        if f.kind == "continuous":
            batch[f.name] = torch.rand(batch_size, generator=generator)
        elif f.kind == "label":
            batch[f.name] = torch.randint(0, 2, (batch_size,), generator=generator).float()
        elif f.kind == "multi_categorical":
            assert f.size is not None and f.max_len is not None
            ids = torch.randint(0, f.size, (batch_size, f.max_len), generator=generator)
            keep = torch.rand(batch_size, f.max_len, generator=generator) >= padding_fraction
            batch[f.name] = ids * keep
        else:
            assert f.size is not None
            batch[f.name] = torch.randint(0, f.size, (batch_size,), generator=generator)
    return batch
