"""Logistic regression, Wide&Deep, DeepFM and two-tower: shapes, gradients, seeding, FM
identity, TorchScript."""

import io
import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import (
    DeepFM,
    LogisticRegression,
    RankerTrain,
    TwoTower,
    TwoTowerTrain,
    WideDeep,
    fm_second_order,
    random_batch,
    train_wrapper,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript's notice

SMALL: dict[str, Callable[..., nn.Module]] = {
    "wide_deep": lambda spec, **kw: WideDeep(spec, embedding_dim=4, hidden_units=(16, 8), **kw),
    "deepfm": lambda spec, **kw: DeepFM(spec, embedding_dim=4, hidden_units=(16, 8), **kw),
    "two_tower": lambda spec, **kw: TwoTower(spec, embedding_dim=4, tower_units=(16, 8), **kw),
    # no hidden layers: the MLP knobs other tests pass do not apply
    "logistic": lambda spec, batch_norm=False, dropout=0.0, **kw: LogisticRegression(spec, **kw),
}
MODELS = sorted(SMALL)
MLP_MODELS = [name for name in MODELS if name != "logistic"]


def _batch(spec: FeatureSpec, size: int, seed: int = 0) -> dict[str, Tensor]:
    return random_batch(spec, size, torch.Generator().manual_seed(seed))


def _grad_is_nonzero(p: nn.Parameter) -> bool:
    if p.grad is None:
        return False
    grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
    return bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch_size", [1, 2, 33])
def test_logits_have_shape_b_for_any_batch_size(
    name: str, batch_size: int, any_spec: FeatureSpec
) -> None:
    model = SMALL[name](any_spec)
    batch = _batch(any_spec, batch_size)
    for train in (True, False):
        model.train(train)
        out = model(batch)
        assert out.shape == (batch_size,) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MLP_MODELS)
def test_batch_norm_needs_two_rows_in_training_but_one_is_fine_in_eval(
    name: str, spec: FeatureSpec
) -> None:
    model = SMALL[name](spec, batch_norm=True, dropout=0.2)
    one = _batch(spec, 1)
    model.eval()
    assert model(one).shape == (1,)
    model.train()
    assert model(_batch(spec, 2)).shape == (2,)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(one)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name: str, sparse: bool, any_spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    kwargs = {"learn_temperature": True} if name == "two_tower" else {}
    model = SMALL[name](any_spec, batch_norm=True, dropout=0.1, sparse=sparse, **kwargs)
    losses = ["in_batch", "bce"] if name == "two_tower" else [None]
    for loss in losses:
        model.zero_grad(set_to_none=True)
        wrapper = train_wrapper(model, **({"loss": loss} if loss else {}))
        value, logits = wrapper(_batch(any_spec, 16))
        assert value.shape == () and logits.shape == (16,)
        value.backward()
        params = dict(model.named_parameters())
        assert params
        missing = [n for n, p in params.items() if p.requires_grad and not _grad_is_nonzero(p)]
        assert not missing, f"no gradient with loss={loss}: {missing}"


@pytest.mark.parametrize("name", MLP_MODELS)
def test_a_fixed_seed_gives_identical_initial_outputs(name: str, spec: FeatureSpec) -> None:
    batch = _batch(spec, 8)

    def build(seed: int) -> Tensor:
        torch.manual_seed(seed)
        return SMALL[name](spec, dropout=0.1).eval()(batch)

    assert torch.equal(build(3), build(3))
    assert not torch.equal(build(3), build(4))


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_gives_the_eager_outputs(name: str, any_spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    model = SMALL[name](any_spec, batch_norm=True, dropout=0.3).eval()
    # non-trivial batch-norm statistics and wide weights
    model.train()
    for seed in range(3):
        model(_batch(any_spec, 32, seed))
    model.eval()
    for p in model.parameters():
        if torch.all(p == 0):
            nn.init.normal_(p, std=0.1)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    for size in (1, 17):
        batch = _batch(any_spec, size, seed=size)
        with torch.no_grad():
            torch.testing.assert_close(scripted(batch), model(batch), rtol=0, atol=1e-6)


def test_each_tower_scripts_alone_and_reads_only_its_own_features(spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    model = SMALL["two_tower"](spec).eval()
    batch = _batch(spec, 9)
    scripted = torch.jit.script(model)
    for side, method in (("user_tower", "user_embedding"), ("item_tower", "item_embedding")):
        own = {f.name: batch[f.name] for f in spec.for_input(side)}
        tower = getattr(model, side)
        eager = tower(own)
        assert eager.shape == (9, 8)
        torch.testing.assert_close(eager.norm(dim=1), torch.ones(9))
        torch.testing.assert_close(getattr(model, method)(own), eager, rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(tower)(own), eager, rtol=0, atol=1e-6)
        torch.testing.assert_close(getattr(scripted, method)(own), eager, rtol=0, atol=1e-6)


def test_two_tower_score_is_the_dot_product_over_the_temperature(spec: FeatureSpec) -> None:
    model = TwoTower(spec, embedding_dim=4, tower_units=(8,), temperature=0.2).eval()
    batch = _batch(spec, 5)
    users, items = model.user_embedding(batch), model.item_embedding(batch)
    torch.testing.assert_close(model(batch), (users * items).sum(dim=1) / 0.2)
    assert model.inverse_temperature().requires_grad is False
    assert "log_temperature" in dict(model.named_buffers())
    learned = TwoTower(spec, tower_units=(8,), temperature=0.2, learn_temperature=True)
    assert "log_temperature" in dict(learned.named_parameters())
    with pytest.raises(ValueError, match="temperature"):
        TwoTower(spec, temperature=0.001)
    with pytest.raises(ValueError, match="loss"):
        TwoTower(spec, loss="triplet")


def test_fm_second_order_equals_the_pairwise_sum() -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(6, 7, 5, dtype=torch.float64)
    brute = torch.zeros(6, dtype=torch.float64)
    for i, j in itertools.combinations(range(7), 2):
        brute += (embeddings[:, i] * embeddings[:, j]).sum(dim=1)
    torch.testing.assert_close(fm_second_order(embeddings), brute)


def test_deepfm_is_first_order_plus_fm_plus_deep(spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    model = SMALL["deepfm"](spec).eval()
    for p in model.linear.parameters():
        nn.init.normal_(p)
    batch = _batch(spec, 6)
    fields = model.field_embeddings(batch)
    deep_fields = spec.for_input("deep")
    assert fields.shape == (6, len(deep_fields), 4)
    # continuous fields embed as x * v
    age = [f.name for f in deep_fields if not f.is_index].index("age")
    n_index = sum(f.is_index for f in deep_fields)
    torch.testing.assert_close(
        fields[:, n_index + age], batch["age"][:, None] * model.dense_fields.weight[age]
    )
    expected = (
        model.linear(batch) + fm_second_order(fields) + model.deep(fields.flatten(1)).squeeze(-1)
    )
    torch.testing.assert_close(model(batch), expected)
    # first order covers the fields and the wide-only features
    linear_names = model.linear.index.embedding_names + model.linear.dense_names
    assert "media_x_lang" in linear_names and "token" in linear_names
    narrow = DeepFM(spec, hidden_units=(4,), wide_first_order=False)
    assert "media_x_lang" not in narrow.linear.index.embedding_names


def test_deepfm_shares_one_embedding_size(spec: FeatureSpec) -> None:
    DeepFM(spec, embedding_dim=4, embedding_dims={"item": 4}, hidden_units=(4,))
    with pytest.raises(ValueError, match=r"\['item'\]"):
        DeepFM(spec, embedding_dim=4, embedding_dims={"item": 8}, hidden_units=(4,))


def test_per_feature_embedding_sizes_reach_the_tables(spec: FeatureSpec) -> None:
    model = WideDeep(spec, embedding_dim=4, embedding_dims={"item": 7}, hidden_units=(8,))
    assert model.deep_inputs.embeddings["item"].embedding_dim == 7
    assert model.deep_inputs.embeddings["user"].embedding_dim == 4
    tt = TwoTower(spec, embedding_dim=4, embedding_dims={"item": 7}, tower_units=(8,))
    assert tt.item_tower.inputs.embeddings["item"].embedding_dim == 7


@pytest.mark.parametrize(
    ("build", "missing"),
    [
        (lambda s: WideDeep(s), "'deep'"),
        (lambda s: DeepFM(s), "'deep'"),
        (lambda s: TwoTower(s), "'user_tower'"),
    ],
)
def test_a_model_without_its_inputs_says_which(build: Callable, missing: str) -> None:
    spec = FeatureSpec(
        features=[
            Feature("x", "categorical", ["x"], "item", ["wide", "item_tower"], 3),
            Feature("label", "label", ["l"]),
        ],
        label="label",
    )
    with pytest.raises(ValueError, match=missing):
        build(spec)


def test_train_wrapper_picks_the_wrapper_the_model_names(spec: FeatureSpec) -> None:
    for name in ("wide_deep", "deepfm", "logistic"):
        assert type(train_wrapper(SMALL[name](spec))) is RankerTrain
    tt = SMALL["two_tower"](spec, loss="bce")
    wrapper = train_wrapper(tt)
    assert type(wrapper) is TwoTowerTrain and wrapper.loss_name == "bce"
    assert train_wrapper(tt, loss="in_batch").loss_name == "in_batch"
    with pytest.raises(TypeError, match="Linear"):
        train_wrapper(nn.Linear(2, 2))


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward_stays_close_to_fp32(name: str, spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    model = SMALL[name](spec).eval()
    batch = _batch(spec, 16)
    with torch.no_grad():
        fp32 = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(batch)
    assert bf16.shape == (16,)
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05)


def test_logistic_is_a_bias_plus_one_weight_per_category_and_per_continuous_value(
    spec: FeatureSpec,
) -> None:
    torch.manual_seed(0)
    model = LogisticRegression(spec).eval()
    for p in model.parameters():
        nn.init.normal_(p)
    batch = _batch(spec, 5)
    read = [f for f in spec.features if {"wide", "deep"} & set(f.inputs)]
    assert {f.name for f in read} == set(model.linear.index.embedding_names) | set(
        model.linear.dense_names
    )
    tables = model.linear.index.embeddings
    dense_weight = model.linear.dense_weight.weight[0]
    expected = []
    for row in range(5):
        total = model.linear.bias[0].clone()
        for f in read:
            if f.kind == "continuous":
                total += dense_weight[model.linear.dense_names.index(f.name)] * batch[f.name][row]
            elif f.kind == "multi_categorical":
                ids = [i for i in batch[f.name][row].tolist() if i != 0]
                weights = [tables[f.name].weight[i, 0] for i in ids]
                if weights:  # an all-padding list adds nothing
                    pooled = torch.stack(weights).sum()
                    total += pooled / len(ids) if f.pooling == "mean" else pooled
            else:
                total += tables[f.name].weight[batch[f.name][row], 0]
        expected.append(total)
    torch.testing.assert_close(model(batch), torch.stack(expected))
    # every weight starts at zero: the first prediction is 0.5 for every row
    assert torch.equal(LogisticRegression(spec)(batch), torch.zeros(5))


def test_logistic_reads_the_inputs_it_is_given(spec: FeatureSpec) -> None:
    wide = LogisticRegression(spec, inputs=["wide"])
    names = set(wide.linear.index.embedding_names) | set(wide.linear.dense_names)
    assert names == {f.name for f in spec.for_input("wide")}
    with pytest.raises(ValueError, match="inputs must name"):
        LogisticRegression(spec, inputs=["tower"])
    with pytest.raises(ValueError, match=r"features marked \['wide'\]"):
        LogisticRegression(
            FeatureSpec(features=[Feature("x", "categorical", ["x"], "user", ["deep"], 3)]),
            inputs=["wide"],
        )
