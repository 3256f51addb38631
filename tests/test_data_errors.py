import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from etrmtrm_cli.config import DataConfig
from etrmtrm_cli.data import build_arc_data, summarize
from etrmtrm_cli.data.augment import Augmentation
from etrmtrm_cli.errors import DataError

SMALL = [[1, 2], [3, 4]]
GOOD_TASK = {"train": [{"input": SMALL, "output": SMALL}], "test": [{"input": SMALL, "output": SMALL}]}
# An eval task shares no pair with GOOD_TASK: one whose test pair a train task holds is left out as trained on.
EVAL_TASK = {"train": [{"input": SMALL, "output": SMALL}], "test": [{"input": SMALL, "output": [[4, 3], [2, 1]]}]}


def write(folder: Path, name: str, body: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def folder_config(train: Path, evals: Path, **kw: Any) -> DataConfig:
    return DataConfig(train_sources=(str(train),), eval_sources=(str(evals),), train_groups="all",
                      eval_groups="all", num_aug=2, eval_num_aug=2, **kw)


def with_grid(grid: Any) -> dict[str, Any]:
    return {"train": [{"input": SMALL, "output": grid}], "test": [{"input": SMALL, "output": SMALL}]}


BAD_TASKS = {
    "malformed": ('{"train": [', "not valid JSON"),
    "ragged": (with_grid([[1, 2], [3]]), "train pair 0 output is not rectangular"),
    "colour10": (with_grid([[1, 10]]), "train pair 0 output has colour 10, outside 0-9"),
    "notrain": ({"train": [], "test": GOOD_TASK["test"]}, "has no train pairs"),
    "huge": (with_grid([[0] * 31] * 31), "train pair 0 output is 31x31, larger than ARC's 30x30"),
    "nooutput": ({"train": [{"input": SMALL}], "test": GOOD_TASK["test"]}, "'train' must be a list of"),
}


@pytest.mark.parametrize("name", BAD_TASKS)
def test_bad_task_names_file_and_task(tmp_path: Path, name: str) -> None:
    body, problem = BAD_TASKS[name]
    path = write(tmp_path / "train", name, body)
    write(tmp_path / "eval", "good", EVAL_TASK)
    with pytest.raises(DataError) as err:
        build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval"), seed=0)
    assert str(err.value).startswith(f"{path}: task {name}: ")
    assert problem in str(err.value)


def test_skip_leaves_bad_tasks_out_and_counts_them(tmp_path: Path) -> None:
    for name, (body, _) in BAD_TASKS.items():
        write(tmp_path / "train", name, body)
    write(tmp_path / "train", "good1", GOOD_TASK)
    write(tmp_path / "train", "good2", GOOD_TASK)
    write(tmp_path / "eval", "good3", EVAL_TASK)
    write(tmp_path / "eval", "ragged_eval", with_grid([[1], [2, 3]]))
    data = build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval", on_bad_task="skip"), seed=0)
    summary = summarize(data)
    assert summary.train.task_ids == ("good1", "good2") and summary.train.skipped == len(BAD_TASKS)
    assert summary.eval.task_ids == ("good3",) and summary.eval.skipped == 1


def test_train_eval_overlap_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "train", "shared", GOOD_TASK)
    path = write(tmp_path / "eval", "shared", GOOD_TASK)
    with pytest.raises(DataError, match=re.escape(f"{path}: task shared: is also a train task")):
        build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval"), seed=0)


def test_an_arc_agi_1_eval_task_in_a_train_folder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "train", "00576224", GOOD_TASK)  # an ARC-AGI-1 evaluation task id
    cfg = DataConfig(train_sources=("arc-agi-1", str(tmp_path / "train")), eval_sources=("arc-agi-1",))
    with pytest.raises(DataError, match="arc-agi-1 evaluation: task 00576224: is also a train task"):
        build_arc_data(cfg, seed=0)


def test_the_same_task_twice_on_one_side_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "train" / "a", "twice", GOOD_TASK)
    path = write(tmp_path / "train" / "b", "twice", GOOD_TASK)
    write(tmp_path / "eval", "other", EVAL_TASK)
    with pytest.raises(DataError, match=re.escape(f"{path}: task twice: the same task id is in")):
        build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval"), seed=0)


@pytest.mark.parametrize("side", ["train", "eval"])
def test_asking_for_too_many_groups_names_the_key_and_the_count(tmp_path: Path, side: str) -> None:
    for name in ("a", "b", "c"):
        write(tmp_path / "train", name, GOOD_TASK)
        write(tmp_path / "eval", f"e{name}", EVAL_TASK)
    cfg = folder_config(tmp_path / "train", tmp_path / "eval").model_copy(update={f"{side}_groups": 4})
    expected = f"data.{side}_groups = 4, but the {side} sources have only 3 usable tasks"
    with pytest.raises(DataError, match=expected):
        build_arc_data(cfg, seed=0)


def test_an_eval_task_whose_answer_a_train_task_holds_is_left_out(tmp_path: Path) -> None:
    """ARC-AGI-1's evaluation task 070dd51e has its test pair in training task 40853293: not an unseen task."""
    write(tmp_path / "train", "t", GOOD_TASK)
    write(tmp_path / "eval", "unseen", EVAL_TASK)  # shares its demo pair with t, not its answer: kept
    write(tmp_path / "eval", "copy", {"train": EVAL_TASK["test"], "test": GOOD_TASK["train"]})
    summary = summarize(build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval"), seed=0))
    assert summary.eval.task_ids == ("unseen",) and summary.eval.trained_on == 1 and summary.train.trained_on == 0


def test_an_eval_task_whose_answer_training_can_draw_as_an_augmented_view_is_left_out(tmp_path: Path) -> None:
    """Training shows every pair under a dihedral transform and a permutation of colours 1-9: an eval answer that
    is such a view of a train pair has been seen as surely as a copy of it."""
    pair = (np.array([[1, 2, 0], [3, 4, 0]]), np.array([[2, 2], [0, 5]]))
    view = Augmentation(5, (0, 7, 3, 9, 1, 2, 4, 5, 6, 8))
    seen = {"input": view.apply(pair[0]).tolist(), "output": view.apply(pair[1]).tolist()}
    write(tmp_path / "train", "t", {"train": [{"input": p.tolist(), "output": p.tolist()} for p in pair],
                                    "test": [{"input": pair[0].tolist(), "output": pair[1].tolist()}]})
    write(tmp_path / "eval", "unseen", EVAL_TASK)
    write(tmp_path / "eval", "view", {"train": EVAL_TASK["train"], "test": [seen]})
    another_answer = {"input": seen["input"], "output": [[9, 9], [0, 1]]}  # the same input, not the same pair
    write(tmp_path / "eval", "other", {"train": EVAL_TASK["train"], "test": [another_answer]})
    summary = summarize(build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval"), seed=0))
    assert summary.eval.task_ids == ("other", "unseen") and summary.eval.trained_on == 1


def test_arc_agi_1_evaluation_tasks_whose_answers_training_holds_are_never_eval_tasks() -> None:
    """070dd51e's test pair is a pair of 40853293; 50a16a69's is a recoloured pair of caa06a1f."""
    cfg = DataConfig(train_groups="all", eval_groups="all", num_aug=0, eval_num_aug=0)
    data = build_arc_data(cfg, seed=0)
    summary = summarize(data)
    assert not {"070dd51e", "50a16a69"} & set(summary.eval.task_ids) and summary.eval.trained_on == 2
    assert {"40853293", "caa06a1f"} <= set(summary.train.task_ids)


def test_too_large_tasks_are_filtered_not_errors(tmp_path: Path) -> None:
    write(tmp_path / "train", "big", with_grid([[1] * 12] * 12))
    write(tmp_path / "train", "small", GOOD_TASK)
    write(tmp_path / "eval", "e", EVAL_TASK)
    data = build_arc_data(folder_config(tmp_path / "train", tmp_path / "eval", max_grid_size=10), seed=0)
    summary = summarize(data)
    assert summary.train.task_ids == ("small",) and summary.train.too_large == 1
    cfg = folder_config(tmp_path / "train", tmp_path / "eval", max_grid_size=10).model_copy(
        update={"train_groups": 2}
    )
    with pytest.raises(DataError, match="only 1 usable tasks \\(grids up to 10x10\\)"):
        build_arc_data(cfg, seed=0)


def test_unknown_source_and_empty_folder(tmp_path: Path) -> None:
    write(tmp_path / "eval", "e", EVAL_TASK)
    with pytest.raises(DataError, match="data.train_sources: .*missing: not a folder of ARC task JSON files"):
        build_arc_data(folder_config(tmp_path / "missing", tmp_path / "eval"), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.train_sources: .*empty: the folder holds no \\*.json task files"):
        build_arc_data(folder_config(tmp_path / "empty", tmp_path / "eval"), seed=0)

