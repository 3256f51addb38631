"""Outputs of TRM's reference code for tests/test_decoder_equivalence.py, written from a checkout of it.

    python tests/trm_reference.py /path/to/TinyRecursiveModels [out_dir]

The checkout is SamsungSAILMontreal/TinyRecursiveModels at e7b6871; it is imported at runtime, this project
does not depend on it. At two tiny float32 configs (RoPE and learned positions) this saves the reference's
weights (in its checkpoint layout), inputs and, after every ACT step, logits and Q values; in train mode
also halting, steps, loss, metrics, per-parameter gradient norms and sums, and the puzzle table's gradient.
The files are tracked in tests/fixtures/ (the default out_dir); tests/fixtures/README.md records how.
Run it in its own process: the reference's top-level package is called `models`.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

DEFAULT_OUT = Path(__file__).resolve().parent / "fixtures"


def make_batch(gen, batch, seq_len, vocab, num_ids):
    inputs = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    labels[torch.rand(batch, seq_len, generator=gen) < 0.3] = -100
    labels[-1, :] = -100  # one slot with no valid token: excluded from metrics
    ids = torch.randint(0, num_ids, (batch,), generator=gen).to(torch.int32)
    return {"inputs": inputs.to(torch.int32), "labels": labels.to(torch.int32), "puzzle_identifiers": ids}


def run(out_dir, name, cfg, eval_steps, train_steps, seed, bf16=False):
    from models.losses import ACTLossHead  # the reference's, on sys.path (main)
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1

    torch.manual_seed(seed)
    model = TinyRecursiveReasoningModel_ACTV1(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        inner = model.inner
        # Make the parts that start at zero matter: a non-zero puzzle table and q_head that halts some slots.
        inner.puzzle_emb.weights.copy_(torch.randn(inner.puzzle_emb.weights.shape, generator=gen))
        inner.q_head.weight.copy_(0.5 * torch.randn(inner.q_head.weight.shape, generator=gen))
        inner.q_head.bias.copy_(torch.tensor([0.3, -0.2]))
    state = {f"_orig_mod.model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {f"state/{k}": v for k, v in state.items()}

    B, S, V, N = cfg["batch_size"], cfg["seq_len"], cfg["vocab_size"], cfg["num_puzzle_identifiers"]
    # Eval: one fixed batch, halt_max_steps ACT steps.
    batch = make_batch(gen, B, S, V, N)
    for k, v in batch.items():
        out[f"eval/{k}"] = v
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for step in range(eval_steps):
            carry, o = model(carry=carry, batch=batch)
            out[f"eval/{step}/logits"] = o["logits"].float()
            out[f"eval/{step}/q_halt"] = o["q_halt_logits"]
            out[f"eval/{step}/q_continue"] = o["q_continue_logits"]
            out[f"eval/{step}/halted"] = carry.halted

    if bf16:
        cfg16 = dict(cfg, forward_dtype="bfloat16")
        m16 = TinyRecursiveReasoningModel_ACTV1(cfg16)
        m16.load_state_dict(model.state_dict())
        m16.eval()
        with torch.no_grad():
            carry = m16.initial_carry(batch)
            for step in range(eval_steps):
                carry, o = m16(carry=carry, batch=batch)
                out[f"bf16/{step}/logits"] = o["logits"].float()
                out[f"bf16/{step}/q_halt"] = o["q_halt_logits"]

    # Train mode (exploration prob 0): a new batch each step, halting on q_halt > 0, no weight updates.
    head = ACTLossHead(model, "stablemax_cross_entropy")
    head.train()
    params = dict(model.named_parameters())
    carry = None
    for step in range(train_steps):
        batch = make_batch(gen, B, S, V, N)
        for k, v in batch.items():
            out[f"train/{step}/batch/{k}"] = v
        if carry is None:
            carry = head.initial_carry(batch)
        carry, loss, metrics, o, _ = head(return_keys=["logits", "q_halt_logits", "q_continue_logits"],
                                          carry=carry, batch=batch)
        loss.backward()
        out[f"train/{step}/logits"] = o["logits"].float()
        out[f"train/{step}/q_halt"] = o["q_halt_logits"]
        out[f"train/{step}/q_continue"] = o["q_continue_logits"]
        out[f"train/{step}/halted"] = carry.halted
        out[f"train/{step}/steps"] = carry.steps
        out[f"train/{step}/loss"] = loss.detach().to(torch.float64).reshape(1)
        metric_names = sorted(metrics)
        out[f"train/{step}/metrics"] = torch.stack([metrics[k].detach().to(torch.float64) for k in metric_names])
        param_names = sorted(params)
        out[f"train/{step}/grad_norms"] = torch.stack([params[k].grad.to(torch.float64).norm() for k in param_names])
        out[f"train/{step}/grad_sums"] = torch.stack([params[k].grad.to(torch.float64).sum() for k in param_names])
        for p in params.values():
            p.grad = None
        local = model.inner.puzzle_emb.local_weights
        out[f"train/{step}/puzzle_grad"] = local.grad.clone()
        out[f"train/{step}/puzzle_ids"] = model.inner.puzzle_emb.local_ids.clone()
        local.grad = None

    save_file({k: v.contiguous() for k, v in out.items()}, str(out_dir / f"{name}.safetensors"))
    meta = dict(cfg, eval_steps=eval_steps, train_steps=train_steps, seed=seed, metric_names=metric_names,
                param_names=param_names,
                reference="SamsungSAILMontreal/TinyRecursiveModels@e7b6871")
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


BASE = {
    "batch_size": 4, "seq_len": 16, "puzzle_emb_ndim": 16, "num_puzzle_identifiers": 5, "vocab_size": 12,
    "H_cycles": 2, "L_cycles": 2, "H_layers": 0, "L_layers": 2, "hidden_size": 16, "expansion": 4.0, "num_heads": 2,
    "pos_encodings": "rope", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "halt_max_steps": 3,
    "halt_exploration_prob": 0.0, "forward_dtype": "float32", "mlp_t": False, "puzzle_emb_len": 4,
    "no_ACT_continue": True,
}


def main() -> None:
    reference = Path(sys.argv[1])
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(reference))
    run(out_dir, "trm_equivalence", BASE, eval_steps=3, train_steps=4, seed=0, bf16=True)
    run(out_dir, "trm_equivalence_learned", dict(BASE, pos_encodings="learned", L_layers=1, H_cycles=3, L_cycles=1,
                                                 hidden_size=8, puzzle_emb_ndim=8), eval_steps=3, train_steps=2, seed=1)


if __name__ == "__main__":
    main()
