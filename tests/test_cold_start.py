"""The trainer's cold-start path on toy catalogs where the right answer is known.

Items that never occur in training must not be trained as negatives with stale rows: the
path excludes them from the training softmax and scores them through a map from served
vectors to trained rows fitted on the seen items. It is on by default whenever the training
sequences leave items unseen.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer_client.cold_start import map_unseen_rows, seen_items
from trainer_client.evaluation import eval_set, evaluate_model
from trainer_client.models.item_table import ItemTable, ItemTableConfig
from trainer_client.models.registry import build_model
from trainer_client.sequences import LeaveOneOutSplit, UserSequences
from trainer_client.training import TrainConfig, seed_everything, train


def test_the_map_recovers_a_linear_relation_between_served_and_trained_rows() -> None:
    rng = np.random.default_rng(0)
    served = torch.from_numpy(rng.standard_normal((200, 8)))
    truth, offset = torch.from_numpy(rng.standard_normal((8, 6))), torch.ones(6)
    trained = served @ truth + offset
    unseen = torch.zeros(200, dtype=torch.bool)
    unseen[150:] = True
    stale = trained.clone()
    stale[unseen] = 123.0  # whatever training left in the unseen rows
    mapped = map_unseen_rows(served, stale, unseen)
    torch.testing.assert_close(mapped[~unseen], stale[~unseen], rtol=0, atol=0)
    torch.testing.assert_close(mapped[unseen], trained[unseen], rtol=2e-2, atol=2e-2)


def test_unseen_items_are_never_softmax_negatives_and_get_no_gradient() -> None:
    vectors = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    table = ItemTable(10, 4, ItemTableConfig("init", True, 0.1), vectors)
    seen = np.ones(10, dtype=bool)
    seen[[3, 7]] = False
    table.restrict_to_seen(seen)
    table.train()
    hidden = torch.randn(5, 4)
    logits = table.logits(hidden)
    assert torch.isinf(logits[:, [3, 7]]).all() and torch.isfinite(logits[:, seen]).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 4, 5]))
    loss.backward()
    assert table.weight.grad is not None
    assert table.weight.grad[[3, 7]].abs().sum() == 0
    assert table.weight.grad[seen].abs().sum() > 0


def twin_catalog(warm: int = 40, users: int = 40, length: int = 10
                 ) -> tuple[LeaveOneOutSplit, np.ndarray]:
    """Items ``0..warm-1`` are walked in cycles; item ``warm + i`` is a new item whose served
    vector equals item ``i``'s (the same product re-listed). Each user's test item is the
    twin of the item the cycle predicts, so the right answer is known: the twin should rank
    where its original would."""
    rows, valid, test = [], [], []
    for user in range(users):
        walk = [(user + step) % warm for step in range(length)]
        rows.append(walk)
        valid.append((user + length) % warm)
        test.append(warm + (user + length + 1) % warm)
    lengths = [len(r) for r in rows]
    train = UserSequences([str(u) for u in range(users)], np.concatenate(rows).astype(np.int64),
                          np.concatenate(([0], np.cumsum(lengths))).astype(np.int64))
    vectors = np.random.default_rng(2).standard_normal((warm, 32)).astype(np.float32)
    return (LeaveOneOutSplit(train, np.array(valid), np.array(test)),
            np.concatenate([vectors, vectors]))


def _train_on_twins(cold_start: str) -> dict[str, float]:
    """Test NDCG@10 of the twins and of their originals as targets, and how close each
    twin's scored row is to its original's."""
    split, vectors = twin_catalog()
    warm = len(vectors) // 2
    seed_everything(0)
    model = build_model("sasrec", len(vectors), 32, {"max_len": 8},
                        table=ItemTableConfig("init", True, 0.1), item_vectors=vectors)
    result = train(model, split, TrainConfig(epochs=12, batch_size=40, lr=1e-2, patience=12,
                                             progress=False, cold_start=cold_start))  # type: ignore[arg-type]
    originals = LeaveOneOutSplit(split.train, split.valid_targets, split.test_targets - warm)
    model.eval()
    with torch.no_grad():
        rows = torch.nn.functional.normalize(model.item_table.item_matrix(), dim=1)
    return {
        "twin": evaluate_model(model, eval_set(split, "test")).values["NDCG@10"],
        "original": evaluate_model(model, eval_set(originals, "test")).values["NDCG@10"],
        "row_cosine": float((rows[:warm] * rows[warm:]).sum(1).mean()),
        "cold_items": result.cold_items,
    }


def test_new_items_are_scored_as_their_seen_twins_with_the_path_on() -> None:
    with_path, without = _train_on_twins("auto"), _train_on_twins("off")
    assert with_path["cold_items"] == 40 and without["cold_items"] == 0  # on by default
    # The map sends a twin where its original's trained row is, so it ranks as the
    # original would (a tie with it costs at most one place).
    assert with_path["row_cosine"] > 0.99
    share = {name: run["twin"] / run["original"] for name, run in (("with", with_path),
                                                                   ("without", without))}
    assert share["with"] >= 0.75
    # Trained as negatives, twins are pushed away from where users are sent.
    assert share["without"] < share["with"] - 0.1
    assert without["twin"] < with_path["twin"]


def test_seen_items_are_those_in_the_training_sequences() -> None:
    assert seen_items(np.array([0, 2, 2, 4]), 6).tolist() == [True, False, True, False, True,
                                                              False]


def test_the_path_is_off_when_training_covers_every_item() -> None:
    split, vectors = twin_catalog()
    half = vectors[:40]
    seed_everything(0)
    model = build_model("sasrec", 40, 32, {"max_len": 8},
                        table=ItemTableConfig("init", True, 0.1), item_vectors=half)
    warm_split = LeaveOneOutSplit(split.train, split.valid_targets, split.test_targets - 40)
    result = train(model, warm_split, TrainConfig(epochs=1, batch_size=12, progress=False))
    assert result.cold_items == 0 and model.item_table.unseen is None
