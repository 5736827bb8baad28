"""The input layer built from a FeatureSpec: embeddings, pooling, dense vector, linear terms."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import InputLayer, LinearTerms, as_feature_spec, random_batch
from recsys.models.inputs import check_embedding_dims, split_sparse_parameters


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_padding_index_zero_contributes_nothing_to_pooled_embeddings(pooling: str) -> None:
    torch.manual_seed(0)
    tags = Feature("tags", "multi_categorical", ["h"], "item", ["deep"], 10, 4, pooling)
    layer = InputLayer([tags], embedding_dim=3)
    table = layer.embeddings["tags"].weight
    ids = torch.tensor([[4, 7, 0, 0], [0, 5, 0, 9], [0, 0, 0, 0], [3, 3, 3, 3]])
    out = layer({"tags": ids})
    reduce = torch.mean if pooling == "mean" else torch.sum
    expected = torch.stack(
        [
            reduce(table[[4, 7]], dim=0),
            reduce(table[[5, 9]], dim=0),
            torch.zeros(3),
            reduce(table[[3, 3, 3, 3]], dim=0),
        ]
    )
    torch.testing.assert_close(out, expected)
    # whatever the padding row holds, it changes nothing
    with torch.no_grad():
        table[0] = 100.0
    torch.testing.assert_close(layer({"tags": ids}), expected)


def test_padding_row_gets_no_gradient() -> None:
    tags = Feature("tags", "multi_categorical", ["h"], "item", ["deep"], 6, 3, "mean")
    layer = InputLayer([tags], embedding_dim=2)
    layer({"tags": torch.tensor([[1, 0, 0], [2, 3, 0]])}).sum().backward()
    grad = layer.embeddings["tags"].weight.grad
    assert torch.all(grad[0] == 0)
    assert torch.all(grad[1:4] != 0)


def test_input_layer_concatenates_embeddings_in_spec_order_then_the_dense_vector(
    spec: FeatureSpec,
) -> None:
    deep = spec.for_input("deep")
    layer = InputLayer(deep, embedding_dim=4, embedding_dims={"item": 6})
    assert layer.embedding_names == ["user", "user_bin", "item", "tags", "links", "token"]
    assert layer.embedding_sizes == [4, 4, 6, 4, 4, 4]
    assert layer.dense_names == ["age", "length", "follows"]
    assert layer.output_dim == 26 + 3
    batch = random_batch(spec, 5, torch.Generator().manual_seed(0))
    out = layer(batch)
    assert out.shape == (5, 29)
    torch.testing.assert_close(out[:, :4], layer.embeddings["user"](batch["user"]))
    dense = torch.stack([batch["age"], batch["length"], batch["follows"]], dim=1)
    torch.testing.assert_close(out[:, -3:], dense)


def test_single_valued_index_zero_is_a_learned_missing_value() -> None:
    user = Feature("user", "categorical", ["u"], "user", ["deep"], 4)
    layer = InputLayer([user], embedding_dim=3)
    assert isinstance(layer.embeddings["user"], nn.Embedding)
    assert layer.embeddings["user"].padding_idx is None
    assert layer({"user": torch.tensor([0])}).abs().sum() > 0


def test_linear_terms_equal_one_hot_times_weights(spec: FeatureSpec) -> None:
    wide = spec.for_input("wide")
    linear = LinearTerms(wide)
    for p in linear.parameters():
        nn.init.normal_(p)
    batch = random_batch(spec, 6, torch.Generator().manual_seed(1))
    expected = linear.bias.expand(6).clone()
    for f in wide:
        if f.kind == "continuous":
            col = linear.dense_names.index(f.name)
            expected += linear.dense_weight.weight[0, col] * batch[f.name]
            continue
        weights = linear.index.embeddings[f.name].weight[:, 0]
        one_hot = nn.functional.one_hot(batch[f.name], f.size).float()
        if f.kind == "multi_categorical":
            one_hot[..., 0] = 0  # padding
            one_hot = one_hot.sum(dim=1)
            if f.pooling == "mean":
                one_hot = one_hot / one_hot.sum(dim=1, keepdim=True).clamp(min=1)
        expected += one_hot @ weights
    torch.testing.assert_close(linear(batch), expected)


def test_linear_terms_start_at_zero(spec: FeatureSpec) -> None:
    linear = LinearTerms(spec.for_input("wide"))
    assert torch.all(linear(random_batch(spec, 3)) == 0)


def test_embedding_dims_must_name_index_features(spec: FeatureSpec) -> None:
    assert check_embedding_dims(spec, OmegaConf.create({"item": 4})) == {"item": 4}
    with pytest.raises(ValueError, match="age"):
        check_embedding_dims(spec, {"age": 4})
    with pytest.raises(ValueError, match="nope"):
        check_embedding_dims(spec, {"nope": 4})
    with pytest.raises(ValueError, match=">= 1"):
        check_embedding_dims(spec, {"item": 0})


def test_labels_and_dotted_names_are_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        InputLayer([Feature("y", "label", ["y"])])
    with pytest.raises(ValueError, match=r"'a\.b'"):
        InputLayer([Feature("a.b", "categorical", ["a"], "user", ["deep"], 3)])


def test_sparse_option_gives_sparse_gradients_and_splits_parameters(spec: FeatureSpec) -> None:
    layer = InputLayer(spec.for_input("deep"), 4, sparse=True)
    linear = LinearTerms(spec.for_input("wide"), sparse=True)
    model = nn.ModuleList([layer, linear])
    batch = random_batch(spec, 4)
    (layer(batch).sum() + linear(batch).sum()).backward()
    dense, sparse = split_sparse_parameters(model)
    assert len(sparse) == 6 + 4  # deep index features + wide index features
    assert all(p.grad.is_sparse for p in sparse)
    assert all(not p.grad.is_sparse for p in dense)
    assert {id(p) for p in dense} | {id(p) for p in sparse} == {id(p) for p in model.parameters()}


def test_random_batch_follows_the_column_contract(spec: FeatureSpec) -> None:
    batch = random_batch(spec, 7, torch.Generator().manual_seed(0))
    assert set(batch) == set(spec.names)
    for f in spec.features:
        t = batch[f.name]
        if f.kind == "multi_categorical":
            assert t.shape == (7, f.max_len) and t.dtype == torch.int64
        elif f.is_index:
            assert t.shape == (7,) and t.dtype == torch.int64
        else:
            assert t.shape == (7,) and t.dtype == torch.float32
        if f.is_index:
            assert t.min() >= 0 and t.max() < f.size


def test_as_feature_spec_takes_specs_dicts_configs_and_paths(
    spec: FeatureSpec, tmp_path: Path
) -> None:
    assert as_feature_spec(spec) is spec
    assert as_feature_spec(spec.to_dict()) == spec
    assert as_feature_spec(OmegaConf.structured(spec)) == spec
    assert as_feature_spec(OmegaConf.create(spec.to_dict())) == spec
    spec.save(tmp_path)
    assert as_feature_spec(tmp_path) == spec
    assert as_feature_spec(str(tmp_path / "feature_spec.json")) == spec
    with pytest.raises(TypeError, match="int"):
        as_feature_spec(3)
