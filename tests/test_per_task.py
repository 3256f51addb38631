"""`per_task_accuracy` (compare --per-puzzle): its numbers, against expectations that do not come from it.

Two independent checks: hand-written tasks scored by a model that copies its input (every number is
worked out by hand below), and a trained run scored by our own eval rollout over one epoch and every eval
example, each in a single batch, so none of the function's batching, padding or grouping is reused.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import torch
from conftest import CPU, tiny
from safetensors.torch import load_file

from etrmtrm_cli import rundir
from etrmtrm_cli.analysis.per_task import per_task_accuracy
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data.dataset import Batch, build_arc_data
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.rundir import load_run
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.evaluate import evaluate
from etrmtrm_cli.training.loop import TrainOptions, train

SINGLE = DistContext(0, 1, CPU)


def write_task(folder: Path, name: str, queries: list[tuple[list[list[int]], list[list[int]]]]) -> None:
    """A task with one demo and the given (input, output) test pairs: its queries, in this order."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {"train": [{"input": [[3]], "output": [[4]]}],
            "test": [{"input": grid_in, "output": grid_out} for grid_in, grid_out in queries]}
    (folder / f"{name}.json").write_text(json.dumps(body))


def copying_model(exp: Experiment, seq_len: int, num_puzzle_ids: int) -> ACTModel:
    """A model whose prediction at every grid position is the input token there.

    Token t embeds to the unit vector e_t; no attention or MLP output (so positions never mix, nor see the
    encoder's prefix) and zero initial states: the parameter-free RMSNorms keep every grid position's
    z_H a positive multiple of e_t, and lm_head = the identity on those vectors makes t the argmax.
    """
    model = build_model(exp, seq_len, num_puzzle_ids)
    vocab, hidden = model.decoder.vocab_size, exp.arch.hidden_size
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.zero_()
        model.decoder.H_init.zero_()
        model.decoder.L_init.zero_()
        model.decoder.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.decoder.lm_head.weight.copy_(torch.eye(vocab, hidden))
    return model.eval()


def test_per_task_numbers_of_a_model_that_copies_its_input(tmp_path: Path) -> None:
    square = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    write_task(tmp_path / "train", "t1", [([[1, 2], [3, 4]], [[1, 2], [3, 4]]), ([[1]], [[2]])])
    # No eval test pair is a train pair or a view of one (a recoloured [[6]] -> [[6]] would hold e2's answer).
    write_task(tmp_path / "train", "t2", [([[5, 5, 5]], [[5, 5], [5, 5]]), ([[6]], [[7]])])
    write_task(tmp_path / "eval", "e1", [(square, square), ([[9, 9]] * 3, [[9, 9, 9]] * 2)])
    write_task(tmp_path / "eval", "e2", [([[4]], [[4]])])
    exp = tiny("E0a", [f"data.train_sources=['{tmp_path / 'train'}']", f"data.eval_sources=['{tmp_path / 'eval'}']",
                       "data.train_groups=2", "data.eval_groups=2", "data.max_grid_size=3", "data.num_aug=0",
                       "data.eval_num_aug=0", "data.translate=false", "data.query_mode='test'"])
    data = build_arc_data(exp.data, exp.seed)
    assert (data.examples_per_epoch, data.num_eval_examples) == (4, 3)
    torch.manual_seed(0)
    model = copying_model(exp, data.seq_len, data.num_puzzle_ids)
    (batch,) = data.eval_batches(4)
    with torch.no_grad():
        inputs = dataclasses.asdict(batch)
        carry = model.initial_carry(inputs)
        for _ in range(exp.arch.halt_max_steps):
            carry, outputs = model(carry, inputs)
    assert torch.equal(outputs["logits"].argmax(-1), batch.inputs)  # the premise of the numbers below

    run_dir = tmp_path / "runs" / "E0a"
    run_dir.mkdir(parents=True)
    (run_dir / rundir.CONFIG).write_text(json.dumps(exp.model_dump(mode="json")))
    rundir.save_weights(run_dir / rundir.FINAL_WEIGHTS, model.state_dict())

    # On the 3 x 3 canvas an h x w grid is its cells, EOS right of each row and below each column where
    # there is room, PAD elsewhere (unscored). The prediction is the input's token at the same place.
    # t1: 2x2 -> itself: 4 cells + 2 + 2 EOS, all right, exact | [[1]] -> [[2]]: the cell wrong, its 2 EOS
    #     right: 2/3                                                       -> ((1 + 2/3) / 2, 1/2)
    # t2: [[5,5,5]] -> 2x2 of 5s: 8 labels; right: the top two 5s and the EOS at (1, 2): 3/8
    #     | [[6]] -> [[7]]: the cell wrong, its 2 EOS right: 2/3           -> ((3/8 + 2/3) / 2, 0)
    # e1: 3x3 -> itself: 9/9, exact | 3x2 of 9s -> 2x3 of 9s (no PAD left on the canvas): 9 labels; right:
    #     (0, 0), (0, 1), (1, 0), (1, 1) and the EOS at (2, 2): 5/9       -> ((1 + 5/9) / 2, 1/2)
    # e2: [[4]] -> [[4]]: 3/3, exact                                       -> (1, 1)
    expected = {("train", "t1"): (5 / 6, 1 / 2), ("train", "t2"): ((3 / 8 + 2 / 3) / 2, 0.0),
                ("eval", "e1"): (7 / 9, 1 / 2), ("eval", "e2"): (1.0, 1.0)}
    # Every task's queries score differently, so a query counted twice or left out shows. Batches of 3 or
    # 5 run on into the next epoch's training stream, and the last eval batch of 2 or 5 has padding rows:
    # neither may count.
    for size in (1, 2, 3, 5):
        got = per_task_accuracy(load_run(run_dir), batch_size=size)
        assert set(got) == set(expected), size
        for key, (acc, exact) in expected.items():
            assert got[key][0] == pytest.approx(acc, abs=1e-6), (size, key)
            assert got[key][1] == pytest.approx(exact, abs=1e-6), (size, key)
            assert got[key][2] == pytest.approx(exact, abs=1e-6), (size, key)  # one view per query: one vote


def rollout_scores(model: torch.nn.Module, batch: Batch, steps: int) -> list[tuple[int, float, bool]]:
    """(group id, token accuracy, exactly right) of every valid row, after `steps` eval ACT steps."""
    inputs = dataclasses.asdict(batch)
    with torch.no_grad():
        carry = model.initial_carry(inputs)
        for _ in range(steps):
            carry, outputs = model(carry, inputs)
    preds = outputs["logits"].argmax(-1)
    rows = []
    for row in range(len(batch.valid)):
        if not bool(batch.valid[row]):
            continue
        scored = batch.labels[row] != -100
        right = (preds[row][scored] == batch.labels[row][scored]).tolist()
        rows.append((int(batch.group_ids[row]), sum(right) / len(right), all(right)))
    return rows


def test_per_task_numbers_of_a_trained_run_match_our_own_rollout(tmp_path: Path) -> None:
    steps = 3
    exp = tiny("E0b", [f"arch.halt_max_steps={steps}", "train.eval_interval=100", "train.checkpoint_interval=100"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), SINGLE)
    run_dir = tmp_path / "E0b"
    got = per_task_accuracy(load_run(run_dir), batch_size=3)

    meta = json.loads((run_dir / rundir.META).read_text())
    assert set(got) == {("train", t) for t in meta["train_tasks"]} | {("eval", t) for t in meta["eval_tasks"]}

    # Our own scoring: the final weights read with safetensors, one epoch of the training stream and every
    # eval example each in a single batch, halt_max_steps eval steps, per-example scores averaged per task.
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    model.load_state_dict(load_file(str(run_dir / rundir.FINAL_WEIGHTS)))
    model.eval()
    (eval_batch,) = data.eval_batches(data.num_eval_examples)
    per_task: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for split, batch in (("train", data.train_batch(0, data.examples_per_epoch)), ("eval", eval_batch)):
        for group, acc, exact in rollout_scores(model, batch, steps):
            per_task.setdefault((split, data.groups[group].task.id), []).append((acc, exact))
    expected = {key: (statistics.fmean(a for a, _ in rows), statistics.fmean(float(e) for _, e in rows))
                for key, rows in per_task.items()}
    assert len({round(acc, 6) for acc, _ in expected.values()}) > 2  # tasks differ: a mix-up would show

    assert set(got) == set(expected)
    for key, (acc, exact) in expected.items():
        assert got[key][0] == pytest.approx(acc, abs=1e-6), key
        assert got[key][1] == pytest.approx(exact, abs=1e-6), key
        if key[0] == "train":  # one view per query in an epoch of the training stream
            assert got[key][2] == got[key][1], key
    # The eval's views vote: the tasks' pass@2, averaged, is the eval's own (in batches of another size).
    assert exp.data.eval_num_aug > 0
    eval_pass = [got[key][2] for key in got if key[0] == "eval"]
    assert statistics.fmean(eval_pass) == pytest.approx(evaluate(model, data, 4, CPU)["eval/pass@2"], abs=1e-9)
