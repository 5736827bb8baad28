"""The two-tower objective's switches, each checked against the loss computed by hand: logQ
correction on or off, the same user's positives masked from the in-batch negatives, the
user-history feature (the row's own item hidden, the item table shared) and the L2 prior."""

import math

import pytest
import torch
from torch import Tensor

from recsys.features.feature_spec import Feature, FeatureSpec
from recsys.models import TwoTower, TwoTowerTrain, embedding_penalty, random_batch, train_wrapper

ITEMS = 8


def _spec(history: bool = False, history_size: int = ITEMS) -> FeatureSpec:
    features = [
        Feature("user", "categorical", ["u"], "user", ["user_tower"], 10),
        Feature("item", "categorical", ["i"], "item", ["item_tower"], ITEMS),
        Feature("label", "label", ["l"]),
    ]
    if history:
        stats = {"history_of": "item"}
        hist = Feature(
            "seen", "multi_categorical", ["u", "i"], "user", ["user_tower"], history_size, 3
        )
        hist.pooling, hist.stats = "mean", stats
        features.insert(1, hist)
    return FeatureSpec(features=features, label="label", user_id="user", item_id="item")


def _model(spec: FeatureSpec, **kwargs: object) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(spec, embedding_dim=4, tower_units=(8,), temperature=0.5, **kwargs)


def _loss_by_hand(
    users: Tensor, items: Tensor, batch: dict[str, Tensor], log_q: Tensor, dropped: set
) -> Tensor:
    """Mean softmax loss of the positive rows; `dropped` holds (row, col) pairs left out."""
    out = []
    for row in range(len(batch["item"])):
        if batch["label"][row] < 0.5:
            continue
        scores, positive = [], None
        for col in range(len(batch["item"])):
            same_item = col != row and batch["item"][col] == batch["item"][row]
            if same_item or (row, col) in dropped:
                continue
            s = (users[row] * items[col]).sum() * 2.0 - log_q[col]
            scores.append(s)
            if col == row:
                positive = s
        assert positive is not None
        out.append(torch.logsumexp(torch.stack(scores), dim=0) - positive)
    return torch.stack(out).mean()


def _batch() -> dict[str, Tensor]:
    # users 3, 3, 4, 4, 3; row 3 is a negative (not a query, still a candidate)
    return {
        "user": torch.tensor([3, 3, 4, 4, 3]),
        "item": torch.tensor([2, 3, 4, 5, 6]),
        "label": torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]),
    }


def test_log_q_none_leaves_the_logits_alone_and_estimate_subtracts_log_q() -> None:
    spec = _spec()
    batch = _batch()
    plain = _model(spec, log_q="none")
    wrapper = train_wrapper(plain)
    assert not wrapper.estimate_log_q
    users, items = plain.user_embedding(batch), plain.item_embedding(batch)
    expected = _loss_by_hand(users, items, batch, torch.zeros(5), set())
    torch.testing.assert_close(wrapper(batch)[0], expected)

    corrected = _model(spec, log_q="estimate")
    wrapper = TwoTowerTrain(corrected, log_q_alpha=1.0)  # the estimate is the last gap
    assert wrapper.estimate_log_q
    for step in range(7):  # item 2 in every batch, the others every third one
        warm = dict(batch)
        if step % 3:
            warm["item"] = torch.tensor([2, 7, 7, 7, 7])
        wrapper(warm)
    wrapper.eval()  # read the estimate without moving it
    gap = wrapper.log_q_gap[batch["item"]]
    assert gap.tolist() == pytest.approx([1.0, 3.0, 3.0, 3.0, 3.0])
    log_q = -torch.log(gap)
    users, items = corrected.user_embedding(batch), corrected.item_embedding(batch)
    expected = _loss_by_hand(users, items, batch, log_q, set())
    loss = wrapper(batch)[0]
    torch.testing.assert_close(loss, expected)
    uncorrected = _loss_by_hand(users, items, batch, torch.zeros(5), set())
    assert abs(loss.item() - uncorrected.item()) > 1e-3  # the correction changed the loss
    with pytest.raises(ValueError, match="log_q"):
        _model(spec, log_q="batch")


def test_the_query_users_other_positives_are_no_negatives_when_masked() -> None:
    spec = _spec()
    batch = _batch()
    model = _model(spec, log_q="none", mask_user_positives=True)
    users, items = model.user_embedding(batch), model.item_embedding(batch)
    # user 3's positives are rows 0, 1, 4: each hides the other two; row 3 is user 4's
    # negative, so row 2 (user 4) keeps it as a candidate
    dropped = {(0, 1), (0, 4), (1, 0), (1, 4), (4, 0), (4, 1)}
    expected = _loss_by_hand(users, items, batch, torch.zeros(5), dropped)
    loss = train_wrapper(model)(batch)[0]
    torch.testing.assert_close(loss, expected)
    unmasked = train_wrapper(_model(spec, log_q="none"))(batch)[0]
    assert abs(loss.item() - unmasked.item()) > 1e-3
    no_user = FeatureSpec(features=spec.features, label="label", item_id="item")
    with pytest.raises(ValueError, match="user_id"):
        train_wrapper(TwoTower(no_user, tower_units=(8,), mask_user_positives=True))


def test_the_rows_own_item_is_hidden_from_its_history() -> None:
    spec = _spec(history=True)
    model = _model(spec, log_q="none")
    assert model.history_features == {"seen": "item"}
    batch = _batch()
    batch["seen"] = torch.tensor([[2, 3, 0], [2, 3, 6], [5, 0, 0], [5, 0, 0], [6, 0, 0]])
    wrapper = train_wrapper(model)
    # what the user tower must see: rows 0, 1 and 4 lose their own item (row 4: all of it)
    hidden = dict(batch)
    hidden["seen"] = torch.tensor([[0, 3, 0], [2, 0, 6], [5, 0, 0], [0, 0, 0], [0, 0, 0]])
    users, items = model.user_embedding(hidden), model.item_embedding(hidden)
    loss, logits = wrapper(batch)
    torch.testing.assert_close(logits, (users * items).sum(dim=1) * 2.0)
    torch.testing.assert_close(loss, _loss_by_hand(users, items, batch, torch.zeros(5), set()))
    assert not torch.allclose(model.user_embedding(batch), users)  # the mask mattered
    assert torch.equal(batch["seen"][0], torch.tensor([2, 3, 0]))  # the batch is not edited


def test_history_pools_the_item_tables_rows_when_shared() -> None:
    spec = _spec(history=True)
    model = _model(spec)
    bag = model.user_tower.inputs.embeddings["seen"]
    table = model.item_tower.inputs.embeddings["item"]
    assert bag.weight is table.weight
    # a user whose history is [2, 3] sees the mean of item rows 2 and 3, row 0 is padding
    pooled = bag(torch.tensor([[2, 3, 0]]))
    torch.testing.assert_close(pooled[0], table.weight[2:4].mean(dim=0))
    # one gradient reaches the shared table from both towers
    loss, _ = train_wrapper(model)({**_batch(), "seen": torch.tensor([[3, 0, 0]] * 5)})
    loss.backward()
    assert table.weight.grad is not None and table.weight.grad[3].abs().sum() > 0
    scripted = torch.jit.script(model.user_tower)
    features = {"user": torch.tensor([3]), "seen": torch.tensor([[2, 3, 0]])}
    torch.testing.assert_close(scripted(features), model.user_tower(features))

    own = _model(spec, share_history_embedding=False)
    assert own.user_tower.inputs.embeddings["seen"].weight is not (
        own.item_tower.inputs.embeddings["item"].weight
    )
    with pytest.raises(ValueError, match="share_history_embedding"):
        _model(_spec(history=True, history_size=ITEMS + 1))
    # a history sized by the largest value in train may have fewer rows than the table
    small = _model(_spec(history=True, history_size=ITEMS - 2))
    bag = small.user_tower.inputs.embeddings["seen"]
    assert bag.weight is small.item_tower.inputs.embeddings["item"].weight
    assert bag.num_embeddings == ITEMS and bag.padding_idx == 0


def test_the_l2_prior_counts_a_shared_table_once_and_applies_to_training_batches() -> None:
    spec = _spec(history=True)
    model = _model(spec, log_q="none", embedding_l2=2.0)
    batch = {**_batch(), "seen": torch.tensor([[3, 0, 0]] * 5)}
    wrapper = train_wrapper(model, train_rows=100)
    plain = TwoTowerTrain(model, train_rows=100)
    plain.embedding_l2 = 0.0
    tables = [model.user_tower.inputs.embeddings["user"].weight]
    tables.append(model.item_tower.inputs.embeddings["item"].weight)
    penalty = sum(w.detach().pow(2).sum() for w in tables)
    torch.testing.assert_close(embedding_penalty(model), penalty)
    torch.testing.assert_close(wrapper(batch)[0], plain(batch)[0] + 2.0 * penalty / 100)
    wrapper.eval()
    plain.eval()
    torch.testing.assert_close(wrapper(batch)[0], plain(batch)[0])
    with pytest.raises(ValueError, match="train_rows"):
        train_wrapper(model)
    with pytest.raises(ValueError, match=">= 0"):
        _model(spec, embedding_l2=-1.0)


def test_switches_leave_a_random_batch_trainable() -> None:
    spec = _spec(history=True)
    model = _model(spec, mask_user_positives=True, embedding_l2=0.1)
    batch = random_batch(spec, 64, torch.Generator().manual_seed(0))
    batch["label"] = torch.ones(64)
    loss, _ = train_wrapper(model, train_rows=64)(batch)
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_an_author_history_shares_the_author_table_and_hides_the_own_author_if_asked() -> None:
    features = [
        Feature("user", "categorical", ["u"], "user", ["user_tower"], 10),
        Feature("item", "categorical", ["i"], "item", ["item_tower"], ITEMS),
        Feature("author", "categorical", ["a"], "item", ["item_tower"], 6),
        Feature("label", "label", ["l"]),
    ]
    for name, source in (("authors", "author"), ("seen", "item")):
        hist = Feature(name, "multi_categorical", ["u", source], "user", ["user_tower"], 6, 2)
        hist.size = 6 if source == "author" else ITEMS
        hist.pooling, hist.stats = "mean", {"history_of": source}
        features.insert(1, hist)
    spec = FeatureSpec(features=features, label="label", user_id="user", item_id="item")
    batch = {
        "user": torch.tensor([3, 4]),
        "item": torch.tensor([2, 3]),
        "author": torch.tensor([4, 5]),
        "authors": torch.tensor([[4, 4], [2, 3]]),  # user 3: two rows of author 4
        "seen": torch.tensor([[2, 5], [2, 0]]),
        "label": torch.ones(2),
    }
    hidden = _model(spec)
    assert hidden.history_features == {"authors": "author", "seen": "item"}
    author_table = hidden.item_tower.inputs.embeddings["author"].weight
    assert hidden.user_tower.inputs.embeddings["authors"].weight is author_table
    kept = _model(spec, hide_own_history=False)
    # the item-id history is hidden whatever the switch says; the author one only if asked
    assert hidden.hidden_history == {"authors": "author", "seen": "item"}
    assert kept.hidden_history == {"seen": "item"}
    # the row's own author once (leave-one-out), its item everywhere
    expected = {
        "authors": torch.tensor([[0, 4], [2, 3]]),
        "seen": torch.tensor([[0, 5], [2, 0]]),
    }
    seen_by = train_wrapper(hidden)._without_own_item(batch)
    assert all(torch.equal(seen_by[k], v) for k, v in expected.items())
    seen_by = train_wrapper(kept)._without_own_item(batch)
    assert torch.equal(seen_by["authors"], batch["authors"])
    assert torch.equal(seen_by["seen"], expected["seen"])
