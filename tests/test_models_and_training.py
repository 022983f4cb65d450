"""Backbones, item-table modes, normalization, leave-one-out evaluation and the training loop."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer_client.evaluation import (
    EvalSet,
    eval_set,
    evaluate,
    evaluate_popularity,
    per_user_metrics,
    target_ranks,
)
from trainer_client.models import MODELS, ItemTableConfig, build_model, right_aligned
from trainer_client.recbole_data import RecBoleDataset
from trainer_client.sequences import LeaveOneOutSplit, UserSequences, leave_one_out
from trainer_client.training import (
    TrainConfig,
    TrainResult,
    save_loss_curve,
    seed_everything,
    train,
)

N_ITEMS, DIM = 12, 16


def sequences_of(rows: list[list[int]]) -> UserSequences:
    offsets = np.concatenate(([0], np.cumsum([len(row) for row in rows]))).astype(np.int64)
    items = np.asarray([item for row in rows for item in row], dtype=np.int64)
    return UserSequences([f"u{i}" for i in range(len(rows))], items, offsets)


def cyclic_split(n_users: int = 48, length: int = 14) -> LeaveOneOutSplit:
    """Each user walks the catalog in steps of one from their own start: learnable order."""
    rows = [[(start + step) % N_ITEMS for step in range(length)] for start in range(n_users)]
    return leave_one_out(sequences_of(rows))


def training_batch(split: LeaveOneOutSplit, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = right_aligned(split.train, np.arange(len(split.train)), max_len + 1, N_ITEMS)
    window_tensor = torch.from_numpy(window)
    return window_tensor[:, :-1], window_tensor[:, 1:]


def given_vectors(dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_ITEMS, dim)).astype(np.float32) * 3.0


# --- backbones -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backbone_scores_every_item_per_position_and_its_loss_falls(name: str) -> None:
    seed_everything(0)
    model = build_model(name, N_ITEMS, DIM, {"max_len": 8})
    inputs, targets = training_batch(cyclic_split(), 8)
    assert model.encode(inputs, model.item_table.item_matrix()).shape == (48, 8, DIM)
    assert model.score_next(inputs).shape == (48, N_ITEMS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_left_padding_does_not_change_the_next_item_scores(name: str) -> None:
    model = build_model(name, N_ITEMS, DIM, {"max_len": 10}).eval()
    short = torch.tensor([[N_ITEMS, 3, 4, 5]])
    longer = torch.tensor([[N_ITEMS] * 6 + [3, 4, 5]])
    torch.testing.assert_close(model.score_next(short), model.score_next(longer))


def test_sasrec_positions_never_see_later_items() -> None:
    model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 6}).eval()
    matrix = model.item_table.item_matrix()
    first = model.encode(torch.tensor([[1, 2, 3, 4, 5, 6]]), matrix)
    changed = model.encode(torch.tensor([[1, 2, 3, 9, 10, 11]]), matrix)
    torch.testing.assert_close(first[:, :3], changed[:, :3])
    assert not torch.allclose(first[:, 3:], changed[:, 3:])


def test_unknown_backbones_and_config_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("bert4rec", N_ITEMS, DIM)
    with pytest.raises(ValueError, match="n_layer"):
        build_model("sasrec", N_ITEMS, DIM, {"n_layer": 3})


# --- item-table modes and normalization ------------------------------------------------------


def test_init_mode_starts_at_the_given_vectors_and_trains_them() -> None:
    vectors = given_vectors()
    model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 8},
                        table=ItemTableConfig(mode="init", normalize=False), item_vectors=vectors)
    np.testing.assert_array_equal(model.item_table.weight.detach().numpy(), vectors)
    inputs, targets = training_batch(cyclic_split(), 8)
    model(inputs, targets).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not np.array_equal(model.item_table.weight.detach().numpy(), vectors)


def test_frozen_mode_trains_the_adapter_but_never_the_given_vectors() -> None:
    vectors = given_vectors(dim=24)  # any served dim: the adapter maps it to the model dim
    model = build_model("gru4rec", N_ITEMS, DIM, {"max_len": 8},
                        table=ItemTableConfig(mode="frozen"), item_vectors=vectors)
    table = model.item_table
    assert table.adapter is not None
    adapter_before = table.adapter.weight.detach().clone()
    assert all(p is not table.frozen_vectors for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = training_batch(cyclic_split(), 8)
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs, targets).backward()
        optimizer.step()
    np.testing.assert_array_equal(table.frozen_vectors.numpy(), vectors)
    assert not torch.equal(table.adapter.weight, adapter_before)
    assert table.item_matrix().shape == (N_ITEMS, DIM)


def test_table_modes_reject_missing_or_misshaped_vectors() -> None:
    with pytest.raises(ValueError, match="takes no item vectors"):
        build_model("sasrec", N_ITEMS, DIM, item_vectors=given_vectors())
    with pytest.raises(ValueError, match="needs item vectors"):
        build_model("sasrec", N_ITEMS, DIM, table=ItemTableConfig(mode="init"))
    with pytest.raises(ValueError, match="model dim"):
        build_model("sasrec", N_ITEMS, DIM, table=ItemTableConfig(mode="init"),
                    item_vectors=given_vectors(dim=24))


def test_normalization_is_on_by_default_exactly_for_given_vectors() -> None:
    assert not ItemTableConfig(mode="id").normalized
    assert ItemTableConfig(mode="init").normalized
    assert ItemTableConfig(mode="frozen").normalized
    assert ItemTableConfig(mode="id", normalize=True).normalized
    assert not ItemTableConfig(mode="init", normalize=False).normalized


@pytest.mark.parametrize("mode", ["id", "init", "frozen"])
def test_normalized_tables_give_unit_items_and_logits_within_inverse_temperature(
    mode: str,
) -> None:
    table_config = ItemTableConfig(mode=mode, normalize=True, temperature=0.05)
    vectors = None if mode == "id" else given_vectors()
    model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 8}, table=table_config,
                        item_vectors=vectors).eval()
    norms = model.item_table.item_matrix().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(N_ITEMS))
    inputs, _ = training_batch(cyclic_split(), 8)
    logits = model.score_next(inputs)
    assert logits.abs().max() <= 1 / 0.05 + 1e-4
    assert logits.abs().max() > 1.0  # the temperature really scales the cosines


# --- evaluation ------------------------------------------------------------------------------


def test_ranks_and_metrics_match_a_hand_computed_example_with_ties() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7],   # target 2: two items above it
                           [0.2, 0.2, 0.2, 0.9, 0.0]])  # target 0: one above, two tied
    greater, ties = target_ranks(scores, torch.tensor([2, 0]))
    assert greater.tolist() == [2, 1] and ties.tolist() == [0, 2]
    metrics = per_user_metrics(greater, ties, ks=(1, 3))
    # user 1's rank is uniform on {1, 2, 3} (0-based): HR@3 = 2/3, NDCG@3 = mean discount.
    torch.testing.assert_close(metrics["HR@1"], torch.tensor([0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(metrics["HR@3"], torch.tensor([1.0, 2 / 3], dtype=torch.float64))
    expected_ndcg = [1 / math.log2(4), (1 / math.log2(3) + 1 / math.log2(4)) / 3]
    torch.testing.assert_close(metrics["NDCG@3"], torch.tensor(expected_ndcg, dtype=torch.float64))


def test_a_constant_scorer_gets_chance_level_not_a_perfect_score() -> None:
    greater, ties = target_ranks(torch.zeros(1, 100), torch.tensor([7]))
    metrics = per_user_metrics(greater, ties, ks=(10,))
    assert metrics["HR@10"].item() == pytest.approx(0.1)


def test_validation_ranks_the_second_last_item_and_test_the_last() -> None:
    split = leave_one_out(sequences_of([[0, 1, 2, 3], [4, 5, 6], [7]]))
    valid, test = eval_set(split, "valid"), eval_set(split, "test")
    assert valid.targets.tolist() == [2, 5, -1]
    assert [valid.histories[u].tolist() for u in range(3)] == [[0, 1], [4], []]
    assert test.targets.tolist() == [3, 6, 7]
    assert [test.histories[u].tolist() for u in range(3)] == [[0, 1, 2], [4, 5], []]
    assert valid.users().tolist() == [0, 1] and test.users().tolist() == [0, 1]


def test_evaluate_averages_users_and_masks_history_but_not_the_target_when_asked() -> None:
    # User 1 has already seen its own target 4: masking must leave it a candidate.
    data = EvalSet(sequences_of([[0, 1], [2, 4]]), np.array([3, 4]))
    fixed = torch.tensor([5.0, 1.0, 0.0, 3.0, 2.0])  # item 0 outscores both targets

    def scorer(inputs: torch.Tensor) -> torch.Tensor:
        return fixed.expand(len(inputs), -1)

    plain = evaluate(scorer, data, max_len=3, pad=5, ks=(1, 2))
    assert plain.n_users == 2
    assert plain["HR@1"] == 0.0 and plain["HR@2"] == pytest.approx(0.5)  # ranks 1 and 2
    masked = evaluate(scorer, data, max_len=3, pad=5, ks=(1, 2), mask_seen=True)
    assert masked["HR@1"] == pytest.approx(0.5)  # user 0 has seen item 0: its target tops
    assert masked["NDCG@2"] == pytest.approx(0.5)  # user 1 still ranks 2 (0-based)


def test_popularity_ranks_items_by_training_counts_with_ties_in_expectation() -> None:
    # Training prefixes [0, 1], [0, 2], [0]: counts 0 -> 3, 1 -> 1, 2 -> 1, 3 and 4 -> 0.
    split = leave_one_out(sequences_of([[0, 1, 0, 3], [0, 2, 1, 4], [0, 3, 0]]))
    valid = evaluate_popularity(split, 5, "valid", ks=(1, 2))
    # Targets 0 (rank 0), 1 (rank 1 or 2: tied with item 2), 3 (rank 3 or 4).
    assert valid.n_users == 3
    assert valid["HR@1"] == pytest.approx(1 / 3)
    assert valid["HR@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert valid["NDCG@2"] == pytest.approx((1 + 1 / 2 / math.log2(3)) / 3)


# --- training --------------------------------------------------------------------------------


def quick_config(**overrides: object) -> TrainConfig:
    options: dict[str, object] = dict(epochs=6, batch_size=16, lr=1e-2, patience=3,
                                      progress=False)
    return TrainConfig(**{**options, **overrides})  # type: ignore[arg-type]


def test_training_records_each_epoch_and_tests_the_best_validation_state(tmp_path: Path) -> None:
    seed_everything(0)
    model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 8})
    result = train(model, cyclic_split(), quick_config(eval_every=2))
    assert len(result.losses) == 6 and result.losses[-1] < result.losses[0]
    assert [point["epoch"] for point in result.valid_curve] == [2, 4, 6]
    best = max(result.valid_curve, key=lambda point: point["NDCG@10"])
    assert result.best_epoch == best["epoch"]
    assert set(result.test) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    assert TrainResult(**json.loads(result.to_json())) == result
    png = save_loss_curve({"sasrec": result, "again": result}, tmp_path / "plots" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_stops_after_patience_validations_without_improvement() -> None:
    seed_everything(0)
    model = build_model("gru4rec", N_ITEMS, DIM, {"max_len": 8})
    result = train(model, cyclic_split(), quick_config(epochs=50, lr=1e-9, patience=2))
    assert len(result.losses) < 50
    assert len(result.valid_curve) - result.valid_curve.index(
        next(p for p in result.valid_curve if p["epoch"] == result.best_epoch)) == 3


def test_training_is_reproducible_for_a_seed() -> None:
    results = []
    for _ in range(2):
        seed_everything(3)
        model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 8})
        results.append(train(model, cyclic_split(), quick_config(epochs=2, seed=3)))
    assert results[0].losses == results[1].losses
    assert results[0].test == results[1].test


def _ddp_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        seed_everything(0)
        model = build_model("sasrec", N_ITEMS, DIM, {"max_len": 8})
        result = train(model, cyclic_split(), quick_config(epochs=3))
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"result": result.to_json(), "weights": weights}, f"{out}.{rank}")
        dist.barrier()  # leave together: tearing gloo down under a busy peer can abort
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_train_their_shards_into_one_identical_model(tmp_path: Path) -> None:
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    results = [json.loads(rank["result"]) for rank in ranks]
    for result in results:
        del result["wall_time_s"], result["train_time_per_epoch_s"], result["valid_seconds"]
    assert results[0] == results[1]  # losses, validation and test metrics are all-reduced
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"], rtol=0, atol=0)


# --- real data -------------------------------------------------------------------------------


def test_sasrec_beats_popularity_on_movielens_100k_validation(
    movielens_100k: RecBoleDataset,
) -> None:
    split = leave_one_out(movielens_100k.sequences)
    n_items = len(movielens_100k.catalog)
    popularity = evaluate_popularity(split, n_items, "valid")
    seed_everything(0)
    model = build_model("sasrec", n_items, 64)  # max_len 50, full softmax, dot-product logits
    started = time.perf_counter()
    # The first epochs only learn popularity; by epoch 10 SASRec is clearly past it.
    result = train(model, split, TrainConfig(epochs=10, eval_every=5, progress=False))
    print(f"ML-100K SASRec: {result.train_time_per_epoch_s:.2f} s/epoch, "
          f"{time.perf_counter() - started:.1f} s total, valid {result.best_valid}, "
          f"popularity {popularity.values}")
    assert result.best_valid["NDCG@10"] > 1.5 * popularity["NDCG@10"]
