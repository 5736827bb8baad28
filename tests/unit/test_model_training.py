"""The training wrappers: each model overfits a tiny data set; the rankers' L2 prior and the
two-tower losses by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import (
    DeepFM,
    LogisticRegression,
    RankerTrain,
    TwoTower,
    TwoTowerTrain,
    WideDeep,
    embedding_penalty,
    random_batch,
    train_wrapper,
)


def _retrieval_spec(items: int = 40) -> FeatureSpec:
    features = [
        Feature("user", "categorical", ["u"], "user", ["user_tower"], items),
        Feature("age", "continuous", ["a"], "user", ["user_tower"]),
        Feature("item", "categorical", ["i"], "item", ["item_tower"], items),
        Feature("tags", "multi_categorical", ["t"], "item", ["item_tower"], 9, 3, "sum"),
        Feature("label", "label", ["l"]),
    ]
    return FeatureSpec(features=features, label="label", user_id="user", item_id="item")


def _fit(wrapper: nn.Module, batch: dict[str, Tensor], steps: int, lr: float) -> list[float]:
    """Adam on one batch until the loss is below 5% of its start (or `steps` run out)."""
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr)
    wrapper.train()
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = wrapper(batch)
        losses.append(loss.item())
        if losses[-1] < 0.05 * losses[0]:
            break
        loss.backward()
        optimizer.step()
    return losses


@pytest.mark.parametrize("model_class", [WideDeep, DeepFM, LogisticRegression])
def test_rankers_overfit_a_tiny_data_set(model_class: type, spec: FeatureSpec) -> None:
    torch.manual_seed(0)
    batch = random_batch(spec, 64, torch.Generator().manual_seed(0))
    if model_class is LogisticRegression:
        # weights start at zero and move about lr per Adam step: it needs a larger step
        model, lr = model_class(spec), 0.05
    else:
        model, lr = model_class(spec, embedding_dim=8, hidden_units=(64, 64)), 0.01
    losses = _fit(train_wrapper(model), batch, steps=150, lr=lr)
    assert losses[0] > 0.6
    assert losses[-1] < 0.1 * losses[0], losses[::25]


@pytest.mark.parametrize("loss", ["in_batch", "bce"])
def test_two_tower_overfits_a_tiny_data_set(loss: str) -> None:
    torch.manual_seed(0)
    spec = _retrieval_spec()
    batch = random_batch(spec, 32, torch.Generator().manual_seed(0))
    batch["item"] = torch.arange(2, 34)  # distinct items: every other row is a true negative
    if loss == "in_batch":
        batch["label"] = torch.ones(32)
    model = TwoTower(spec, embedding_dim=8, tower_units=(64, 32), temperature=0.1, loss=loss)
    losses = _fit(train_wrapper(model), batch, steps=150, lr=0.01)
    assert losses[0] > (3.0 if loss == "in_batch" else 0.6)  # log 32 = 3.47
    assert losses[-1] < 0.1 * losses[0], losses[::25]


def test_ranker_loss_is_bce_with_logits_on_the_label(spec: FeatureSpec) -> None:
    model = WideDeep(spec, hidden_units=(8,))
    batch = random_batch(spec, 10)
    loss, logits = RankerTrain(model)(batch)
    torch.testing.assert_close(logits, model(batch))
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, batch["label"]))


@pytest.mark.parametrize("model_class", [WideDeep, DeepFM, LogisticRegression])
def test_the_l2_prior_adds_its_share_of_every_table_to_a_training_batch(
    model_class: type, spec: FeatureSpec
) -> None:
    kwargs = {} if model_class is LogisticRegression else {"hidden_units": (8,)}
    torch.manual_seed(0)
    model = model_class(spec, embedding_l2=3.0, **kwargs)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    batch = random_batch(spec, 10)
    wrapper = train_wrapper(model, train_rows=500)
    loss, logits = wrapper(batch)
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]
    # every table, the linear terms' 1-wide ones included, whatever the batch looks up
    assert len(tables) >= len([f for f in spec.features if f.is_index and f.inputs])
    penalty = sum(float(w.detach().pow(2).sum()) for w in tables)
    bce = F.binary_cross_entropy_with_logits(logits, batch["label"])
    assert penalty > 1.0
    torch.testing.assert_close(loss, bce + 3.0 * penalty / 500)
    torch.testing.assert_close(embedding_penalty(model), torch.tensor(penalty))
    # validation and test losses are the plain log loss
    wrapper.eval()
    torch.testing.assert_close(wrapper(batch)[0], bce)


def test_the_l2_prior_keeps_a_rare_id_near_zero_and_lets_frequent_ones_follow_the_data() -> None:
    spec = FeatureSpec(
        features=[
            Feature("user", "categorical", ["u"], "user", ["wide"], 5),
            Feature("label", "label", ["l"]),
        ],
        label="label",
    )
    # user 2: one positive row; user 3: 75% positives; user 4: 25% positives (200 rows each)
    users = torch.tensor([2] + [3] * 200 + [4] * 200)
    labels = torch.tensor([1.0] + [1.0] * 150 + [0.0] * 50 + [1.0] * 50 + [0.0] * 150)
    weights = {}
    for l2 in (0.0, 10.0):
        model = LogisticRegression(spec, embedding_l2=l2)
        wrapper = train_wrapper(model, train_rows=len(users))
        optimizer = torch.optim.Adam(wrapper.parameters(), lr=0.05)
        for _ in range(500):
            optimizer.zero_grad()
            loss, _ = wrapper({"user": users, "label": labels})
            loss.backward()
            optimizer.step()
        weights[l2] = model.linear.index.embeddings["user"].weight[:, 0].detach()
    assert weights[0.0][2] > 3.0  # memorised from a single row
    assert abs(weights[10.0][2]) < 0.1
    assert weights[10.0][3] > 0.5 and weights[10.0][4] < -0.5  # log(3) = 1.1 unshrunk


def test_the_l2_prior_needs_the_training_rows_and_dense_tables(spec: FeatureSpec) -> None:
    model = LogisticRegression(spec, embedding_l2=1.0)
    with pytest.raises(ValueError, match="train_rows"):
        train_wrapper(model)
    with pytest.raises(ValueError, match="train_rows must be >= 1"):
        train_wrapper(model, train_rows=0)
    with pytest.raises(ValueError, match="dense tables"):
        train_wrapper(
            WideDeep(spec, hidden_units=(4,), sparse=True, embedding_l2=1.0), train_rows=9
        )
    with pytest.raises(ValueError, match=">= 0"):
        train_wrapper(LogisticRegression(spec, embedding_l2=-1.0), train_rows=9)
    # without a prior nothing is needed
    assert train_wrapper(LogisticRegression(spec)).embedding_l2 == 0.0


def test_training_needs_a_label() -> None:
    spec = FeatureSpec(features=[Feature("x", "categorical", ["x"], "user", ["deep"], 3)])
    with pytest.raises(ValueError, match="no label"):
        RankerTrain(WideDeep(spec, hidden_units=(4,)))


def test_in_batch_loss_by_hand_with_given_log_q() -> None:
    torch.manual_seed(0)
    spec = _retrieval_spec(items=6)
    model = TwoTower(spec, embedding_dim=4, tower_units=(8,), temperature=0.5)
    batch = random_batch(spec, 5, torch.Generator().manual_seed(1))
    batch["item"] = torch.tensor([2, 3, 2, 4, 5])  # rows 0 and 2 share an item
    batch["label"] = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])  # row 3 is not a query
    log_q = torch.log(torch.tensor([0.1, 0.1, 0.4, 0.2, 0.2, 0.1]))
    loss, logits = TwoTowerTrain(model, loss="in_batch", item_log_q=log_q)(batch)

    users, items = model.user_embedding(batch), model.item_embedding(batch)
    torch.testing.assert_close(logits, (users * items).sum(dim=1) * 2.0)
    expected = []
    for row in (0, 1, 2, 4):
        scores = []
        for col in range(5):
            if col != row and batch["item"][col] == batch["item"][row]:
                continue  # the same item is no negative
            s = (users[row] * items[col]).sum() * 2.0 - log_q[batch["item"][col]]
            scores.append((s, col == row))
        logsumexp = torch.logsumexp(torch.stack([s for s, _ in scores]), dim=0)
        positive = next(s for s, is_pos in scores if is_pos)
        expected.append(logsumexp - positive)
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_in_batch_loss_without_positives_is_zero_and_still_backpropagates() -> None:
    spec = _retrieval_spec(items=6)
    model = TwoTower(spec, embedding_dim=4, tower_units=(8,))
    batch = random_batch(spec, 4)
    batch["label"] = torch.zeros(4)
    loss, _ = train_wrapper(model)(batch)
    loss.backward()
    assert loss.item() == 0.0


def test_streaming_log_q_tracks_how_often_items_appear() -> None:
    spec = _retrieval_spec(items=8)
    model = TwoTower(spec, embedding_dim=4, tower_units=(8,))
    wrapper = TwoTowerTrain(model, log_q_alpha=0.2)
    assert wrapper.estimate_log_q
    batch = random_batch(spec, 2)
    batch["label"] = torch.ones(2)
    for step in range(200):
        # item 2 in every batch, item 3 in every fourth, item 4 otherwise
        batch["item"] = torch.tensor([2, 3 if step % 4 == 0 else 4])
        wrapper(batch)
    gap = wrapper.log_q_gap
    assert gap[2].item() == pytest.approx(1.0)
    assert gap[3].item() == pytest.approx(4.0, rel=0.05)
    assert gap[4].item() == pytest.approx(4 / 3, rel=0.2)
    assert wrapper.log_q_step.item() == 200
    # log q = -log(gap); eval mode reads the estimate without moving it
    wrapper.eval()
    before = gap.clone()
    assert wrapper._log_q(torch.tensor([2, 3])).tolist() == pytest.approx([0.0, -math.log(4)], 0.05)
    wrapper(batch)
    assert torch.equal(wrapper.log_q_gap, before)
    assert "log_q_gap" in wrapper.state_dict()  # checkpointed with the run


def test_log_q_options_are_checked() -> None:
    spec = _retrieval_spec(items=6)
    model = TwoTower(spec, embedding_dim=4, tower_units=(8,))
    with pytest.raises(ValueError, match=r"want \(6,\)"):
        TwoTowerTrain(model, item_log_q=torch.zeros(5))
    assert not TwoTowerTrain(model, estimate_log_q=False).estimate_log_q
    assert not TwoTowerTrain(model, loss="bce").estimate_log_q
    with pytest.raises(ValueError, match="loss"):
        TwoTowerTrain(model, loss="hinge")
