"""The eval: it runs only the real rows of its batches, and its figures are those of every real row."""

from __future__ import annotations

import math

import torch
from conftest import CPU, tiny

from etrmtrm_cli.data.canvas import IGNORE_LABEL
from etrmtrm_cli.data.dataset import build_arc_data
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.evaluate import evaluate, final_outputs, scores


def test_the_eval_runs_only_real_rows_and_scores_them_as_the_padded_batches_would() -> None:
    """The last eval batch is padded with invalid rows; running them cost as much as real ones (the cpu profile
    ran 64 rows for its 36). Rows do not see each other, so the figures are those of the padded batches."""
    exp = tiny("E0b")
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(0)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids).eval()
    batch_size = data.num_eval_examples // 2 + 1  # two batches, the second one short
    batches = list(data.eval_batches(batch_size))
    real = [int(b.valid.sum()) for b in batches]
    assert real[-1] < batch_size  # the last batch is padded: what the test is about
    seen: list[int] = []
    hook = model.decoder.register_forward_pre_hook(lambda _, args: seen.append(args[1].shape[0]))
    results = evaluate(model, data, batch_size, CPU)
    hook.remove()
    steps = exp.arch.halt_max_steps
    assert seen == [n for n in real for _ in range(steps)]  # every ACT step of every batch, real rows only

    # The same figures from the whole padded batches, real rows kept after the fact, summed as evaluate sums them
    # (a float32 sum per batch, added up in float64): equal to the last bit when the rows' numbers are.
    acc_sum = exact_sum = 0.0
    with torch.inference_mode():
        for batch in batches:
            inputs = batch.as_dict()
            _, acc, right = scores(final_outputs(model, inputs)["logits"], inputs["labels"])
            acc_sum += float(acc[batch.valid].sum())
            exact_sum += float(right[batch.valid].sum())
    assert results is not None
    assert results["eval/accuracy"] == acc_sum / sum(real)
    assert results["eval/exact_accuracy"] == exact_sum / sum(real)


def test_an_eval_of_no_rows_logs_no_accuracy_rather_than_zero() -> None:
    exp = tiny("E0b")
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    data.eval_batches = lambda *args, **kwargs: iter(())  # nothing to evaluate (say, every eval task filtered out)
    metrics = evaluate(model, data, 4, CPU)
    assert metrics is not None and set(metrics) == {"eval/accuracy", "eval/exact_accuracy", "eval/pass@1",
                                                    "eval/pass@2"}
    assert all(math.isnan(v) for v in metrics.values()), metrics  # dropped from the log, not logged as 0 %


def test_a_row_with_nothing_scored_is_neither_right_nor_exact() -> None:
    """0 right of 0 scored cells is no answer: a padding row must not count as an exact grid."""
    logits = torch.zeros(2, 3, 4)
    logits[:, :, 1] = 1.0  # every cell predicts token 1
    labels = torch.tensor([[1, 1, IGNORE_LABEL], [IGNORE_LABEL] * 3])
    preds, accuracy, exact = scores(logits, labels)
    assert preds.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert accuracy.tolist() == [1.0, 0.0] and exact.tolist() == [True, False]
