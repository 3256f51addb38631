import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from etrmtrm_cli.config import DataConfig
from etrmtrm_cli.data import ArcData, Batch, build_arc_data, summarize
from etrmtrm_cli.data.arc import load_tasks, select_groups
from etrmtrm_cli.data.canvas import IGNORE_LABEL, PAD, decode_grid, encode_grid

ARC_CFG = DataConfig(train_groups=12, eval_groups=4, num_aug=50, eval_num_aug=3)
S, K = ARC_CFG.max_grid_size, ARC_CFG.max_demos


@pytest.fixture(scope="module")
def arc_data() -> ArcData:
    return build_arc_data(ARC_CFG, seed=0)


def pair_grids(p: int) -> dict[str, list[list[int]]]:
    """Pair p of a folder task: shapes and colours that tell the pairs apart."""
    grid_in, grid_out = np.full((p + 1, p + 2), p + 1), np.full((p + 2, p + 1), p + 5)
    return {"input": grid_in.tolist(), "output": grid_out.tolist()}


def write_task(folder: Path, name: str, n_train: int, n_test: int, swapped: bool = False) -> None:
    """`swapped`: each pair's input and output exchanged, the output in the input's shape, so that an eval task
    holds no pair of a train task nor any view of one that augmentation draws (a train pair's two grids differ in
    shape; an eval task whose test pair training holds is left out as trained on)."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [pair_grids(p) for p in range(n_train + n_test)]
    if swapped:
        pairs = [{"input": pair["output"], "output": np.full(np.shape(pair["output"]), pair["input"][0][0]).tolist()}
                 for pair in pairs]
    (folder / f"{name}.json").write_text(json.dumps({"train": pairs[:n_train], "test": pairs[n_train:]}))


def folder_data(tmp_path: Path, **kw: Any) -> ArcData:
    write_task(tmp_path / "train", "t1", n_train=3, n_test=1)
    write_task(tmp_path / "eval", "e1", n_train=2, n_test=2, swapped=True)
    cfg = DataConfig(train_sources=(str(tmp_path / "train"),), eval_sources=(str(tmp_path / "eval"),),
                     train_groups="all", eval_groups="all", num_aug=0, eval_num_aug=0, max_grid_size=8,
                     translate=False, **kw)
    return build_arc_data(cfg, seed=0)


def assert_batches_equal(a: Batch, b: Batch) -> None:
    for name, value in vars(a).items():
        assert torch.equal(value, getattr(b, name)), name


def cat_batches(parts: list[Batch]) -> Batch:
    return Batch(**{name: torch.cat([getattr(p, name) for p in parts]) for name in vars(parts[0])})


def offset_of(tokens: torch.Tensor) -> tuple[int, int]:
    """Top-left corner of a grid on a canvas: its first non-PAD row and column."""
    rows, cols = np.nonzero(tokens.reshape(S, S).numpy())
    return int(rows.min()), int(cols.min())


def test_batch_shapes_and_dtypes(arc_data: ArcData) -> None:
    batch = arc_data.train_batch(0, 6)
    assert batch.inputs.shape == batch.labels.shape == (6, S * S)
    assert batch.demo_inputs.shape == batch.demo_labels.shape == (6, K, S * S)
    assert batch.demo_mask.shape == (6, K) and batch.demo_mask.dtype == torch.bool
    for name in ("inputs", "labels", "demo_inputs", "demo_labels", "puzzle_ids", "group_ids", "aug_ids"):
        assert getattr(batch, name).dtype == torch.long
    assert batch.valid.all() and batch.inputs.max() < 12 and batch.labels.min() == IGNORE_LABEL
    assert (batch.demo_labels >= 0).all()  # the encoder reads demo outputs: PAD stays 0
    assert all(value.is_contiguous() for value in vars(batch).values())
    assert batch.to("cpu").inputs.device.type == "cpu"
    assert arc_data.seq_len == S * S


def test_same_seed_same_batches_other_seed_other_batches(arc_data: ArcData) -> None:
    again = build_arc_data(ARC_CFG, seed=0)
    for step in (0, 3):
        assert_batches_equal(arc_data.train_batch(step, 8), again.train_batch(step, 8))
    other = build_arc_data(ARC_CFG, seed=1)
    assert not torch.equal(arc_data.train_batch(0, 8).inputs, other.train_batch(0, 8).inputs)


def test_batch_i_does_not_depend_on_the_batches_before_it(arc_data: ArcData) -> None:
    for step in range(7):
        arc_data.train_batch(step, 5)
    fresh = ArcData(ARC_CFG, 0, arc_data.train_split, arc_data.eval_split)
    assert_batches_equal(arc_data.train_batch(7, 5), fresh.train_batch(7, 5))
    assert_batches_equal(arc_data.train_batch(2, 5), fresh.train_batch(2, 5))  # and going back


def test_rank_slices_concatenate_to_the_global_batch(arc_data: ArcData) -> None:
    for step in (0, 5):
        whole = arc_data.train_batch(step, 8)
        parts = [arc_data.train_batch(step, 8, rank=r, world_size=2) for r in range(2)]
        assert_batches_equal(cat_batches(parts), whole)
    ranks = [list(arc_data.eval_batches(10, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for whole, *parts in zip(arc_data.eval_batches(10), *ranks, strict=True):
        assert_batches_equal(cat_batches(parts), whole)


def test_epochs_visit_every_query_once_with_one_augmentation_per_group(arc_data: ArcData) -> None:
    per_epoch = arc_data.examples_per_epoch
    assert per_epoch == sum(len(t.test_pairs) for t in arc_data.train_split.tasks)
    batches = [arc_data.train_batch(step, 7) for step in range(3 * per_epoch // 7 + 1)]  # 7 does not divide E
    groups = torch.cat([b.group_ids for b in batches]).tolist()
    queries = torch.cat([b.query_ids for b in batches]).tolist()
    augs = torch.cat([b.aug_ids for b in batches]).tolist()
    train_groups = arc_data.groups[: arc_data.num_train_groups]
    everything = Counter((g.task.id, q) for g in train_groups for q in g.queries)
    orders = []
    for epoch in range(3):
        span = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        assert Counter((arc_data.groups[groups[i]].task.id, queries[i]) for i in span) == everything
        assert all(len({augs[i] for i in span if groups[i] == g}) == 1 for g in set(groups))
        orders.append([groups[i] for i in span])
    assert orders[0] != orders[1]  # each epoch shuffles the groups


def test_eval_groups_are_never_trained_on(arc_data: ArcData) -> None:
    train_ids = {t.id for t in arc_data.train_split.tasks}
    eval_ids = {t.id for t in arc_data.eval_split.tasks}
    assert len(train_ids) == 12 and len(eval_ids) == 4 and not train_ids & eval_ids
    train_groups = torch.cat([arc_data.train_batch(step, 16).group_ids for step in range(4)])
    assert train_groups.max() < arc_data.num_train_groups
    for batch in arc_data.eval_batches(16):
        assert (batch.group_ids[batch.valid] >= arc_data.num_train_groups).all()


def test_train_examples_are_translated_and_augmented_consistently(arc_data: ArcData) -> None:
    batch = arc_data.train_batch(0, 24)
    offsets = set()
    for row in range(24):
        group, aug = int(batch.group_ids[row]), int(batch.aug_ids[row])
        task, augmentation = arc_data.groups[group].task, arc_data.augmentation(group, aug)
        offset = offset_of(batch.inputs[row])
        offsets.add(offset)
        expected = [task.pairs[int(batch.query_ids[row])], *task.train_pairs[:K]]  # query, then its demos
        canvases = [(batch.inputs[row], batch.labels[row].clamp(min=PAD))]
        canvases += list(zip(batch.demo_inputs[row], batch.demo_labels[row], strict=True))
        assert int(batch.demo_mask[row].sum()) == len(expected) - 1
        for (grid_in, grid_out), (tokens_in, tokens_out) in zip(expected, canvases, strict=False):
            for grid, tokens in ((grid_in, tokens_in), (grid_out, tokens_out)):
                decoded = decode_grid(tokens.numpy(), S, offset)
                np.testing.assert_array_equal(augmentation.invert(decoded), grid)
    assert len(offsets) > 1
    unshifted = ArcData(ARC_CFG.model_copy(update={"translate": False}), 0, arc_data.train_split,
                        arc_data.eval_split).train_batch(0, 24)
    assert {offset_of(tokens) for tokens in unshifted.inputs} == {(0, 0)}


def test_a_task_with_few_distinct_views_is_evaluated_once_per_view(tmp_path: Path) -> None:
    """Colours 3 and 4 on square one-colour grids: 9 x 8 colour maps make every distinct view there is."""
    write_task(tmp_path / "train", "t1", n_train=3, n_test=1)
    same, other = np.full((2, 2), 3).tolist(), np.full((2, 2), 4).tolist()
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "plain.json").write_text(json.dumps(
        {"train": [{"input": same, "output": same}], "test": [{"input": same, "output": other}]}))
    cfg = DataConfig(train_sources=(str(tmp_path / "train"),), eval_sources=(str(tmp_path / "eval"),),
                     train_groups="all", eval_groups="all", num_aug=100, eval_num_aug=100, max_grid_size=8)
    data = build_arc_data(cfg, seed=0)
    assert data.num_views(1) == 72 and data.num_eval_examples == 72
    rows = [(int(b.inputs[r].sum()), int(b.labels[r].sum()), int(b.aug_ids[r]))
            for b in data.eval_batches(16) for r in range(16) if b.valid[r]]
    assert len({(i, label) for i, label, _ in rows}) == 72  # every view a different puzzle
    assert summarize(data).eval.puzzles == 72


def test_eval_batches_are_untranslated_test_queries_with_padding(arc_data: ArcData) -> None:
    rows = arc_data.num_eval_examples
    size = next(n for n in range(7, rows) if rows % n)  # a batch size that leaves the last batch padded
    batches = list(arc_data.eval_batches(size))
    assert rows == sum(int(b.valid.sum()) for b in batches)
    assert rows == sum(len(t.test_pairs) for t in arc_data.eval_split.tasks) * (ARC_CFG.eval_num_aug + 1)
    assert len(batches) == -(-rows // size) and not batches[-1].valid.all()
    augs = Counter(int(a) for b in batches for a in b.aug_ids[b.valid])
    assert augs == Counter(dict.fromkeys(range(ARC_CFG.eval_num_aug + 1), rows // 4))
    for batch in batches:
        for row in range(size):
            if not batch.valid[row]:
                assert (batch.inputs[row] == PAD).all() and (batch.labels[row] == IGNORE_LABEL).all()
                assert not batch.demo_mask[row].any() and batch.puzzle_ids[row] == 0
                continue
            group, query = int(batch.group_ids[row]), int(batch.query_ids[row])
            task = arc_data.groups[group].task
            augmentation = arc_data.augmentation(group, int(batch.aug_ids[row]))
            assert query >= len(task.train_pairs)  # the queries are the test pairs
            prediction = decode_grid(batch.labels[row].clamp(min=PAD).numpy(), S)  # as the evaluator does
            np.testing.assert_array_equal(augmentation.invert(prediction), task.pairs[query][1])


def test_puzzle_ids_are_unique_per_group_and_augmentation(arc_data: ArcData) -> None:
    batches = [arc_data.train_batch(step, 16) for step in range(6)] + list(arc_data.eval_batches(16))
    seen: dict[tuple[int, int], int] = {}
    for batch in batches:
        for puzzle, group, aug, valid in zip(batch.puzzle_ids.tolist(), batch.group_ids.tolist(),
                                             batch.aug_ids.tolist(), batch.valid.tolist(), strict=True):
            if valid:
                assert 1 <= puzzle < arc_data.num_puzzle_ids
                assert seen.setdefault((group, aug), puzzle) == puzzle
    assert len(set(seen.values())) == len(seen)


def test_leave_one_out_makes_every_pair_the_query_once(tmp_path: Path) -> None:
    data = folder_data(tmp_path, query_mode="leave_one_out")
    assert data.examples_per_epoch == 4
    batch = data.train_batch(0, 4)
    task = data.groups[0].task
    assert sorted(batch.query_ids.tolist()) == [0, 1, 2, 3]
    for row, query in enumerate(batch.query_ids.tolist()):
        assert torch.equal(batch.inputs[row], torch.from_numpy(encode_grid(task.pairs[query][0], 8)))
        demos = [p for p in range(4) if p != query]
        for slot, pair in enumerate(demos):
            grid_in, grid_out = (torch.from_numpy(encode_grid(grid, 8)) for grid in task.pairs[pair])
            assert torch.equal(batch.demo_inputs[row, slot], grid_in)
            assert torch.equal(batch.demo_labels[row, slot], grid_out)
        assert batch.demo_mask[row].tolist() == [True] * 3 + [False] * (K - 3)


def test_demo_slots_beyond_the_demos_are_empty_and_max_demos_keeps_the_first(tmp_path: Path) -> None:
    data = folder_data(tmp_path, max_demos=2)
    batch = data.train_batch(0, 1)  # t1: 3 train pairs, 1 test pair
    assert batch.demo_mask.tolist() == [[True, True]]
    for slot in range(2):
        expected = encode_grid(data.groups[0].task.pairs[slot][0], 8)
        assert torch.equal(batch.demo_inputs[0, slot], torch.from_numpy(expected))
    (eval_batch,) = data.eval_batches(4)  # e1: 2 test queries with 2 demos each, then 2 padding rows
    assert eval_batch.demo_mask.tolist() == [[True, True], [True, True], [False, False], [False, False]]
    wide = folder_data(tmp_path / "wide", max_demos=5)
    batch = wide.train_batch(0, 1)
    assert batch.demo_mask.tolist() == [[True, True, True, False, False]]
    assert (batch.demo_inputs[0, 3:] == PAD).all() and (batch.demo_labels[0, 3:] == PAD).all()


def test_two_train_sources_combine(tmp_path: Path) -> None:
    write_task(tmp_path / "concept", "ConceptTask1", n_train=2, n_test=1)
    cfg = DataConfig(train_sources=("arc-agi-1", str(tmp_path / "concept")), train_groups="all",
                     eval_groups=2, max_grid_size=5, num_aug=3, eval_num_aug=1)
    data = build_arc_data(cfg, seed=0)
    summary = summarize(data).train
    assert "ConceptTask1" in summary.task_ids and summary.groups > 1 and summary.too_large > 300
    assert summary.sources == ("arc-agi-1", str(tmp_path / "concept"))
    sources = {t.source for t in data.train_split.tasks}
    assert sources == {"arc-agi-1 training", str(tmp_path / "concept" / "ConceptTask1.json")}
    assert summary.height[1] <= 5 and summary.width[1] <= 5
    assert data.train_batch(0, summary.groups).valid.all()


def test_summary_counts(tmp_path: Path) -> None:
    summary = summarize(folder_data(tmp_path, query_mode="leave_one_out"))
    train, evals = summary.train, summary.eval
    assert (train.groups, train.puzzles, train.examples_per_epoch) == (1, 1, 4)
    assert (train.demos_min, train.demos_mean, train.demos_max) == (3, 3.0, 3)
    assert train.height == (1, 5) and train.width == (1, 5) and train.task_ids == ("t1",)
    assert (evals.groups, evals.examples_per_epoch, evals.demos_max, evals.skipped) == (1, 2, 2, 0)
    assert summary.num_puzzle_ids == 3 and summary.canvas_size == 8


def test_group_selection_depends_only_on_the_seed() -> None:
    tasks, skipped = load_tasks(("arc-agi-1",), "train", "error")
    assert len(tasks) == 400 and skipped == 0
    pick = [t.id for t in select_groups(tasks, 32, 0, "train", 30)]
    assert pick == sorted(pick) and len(set(pick)) == 32
    assert pick == [t.id for t in select_groups(list(reversed(tasks)), 32, 0, "train", 30)]
    assert pick != [t.id for t in select_groups(tasks, 32, 1, "train", 30)]
    assert set(pick) < {t.id for t in select_groups(tasks, 40, 0, "train", 30)}  # growing keeps the subset
