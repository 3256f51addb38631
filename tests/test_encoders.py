"""Every registered encoder, parametrized over the registry: a new encoder is tested by registering it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import CPU, EXPERIMENTS, tiny
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders import build_encoder, get_encoder, list_encoders, registry
from etrmtrm_cli.encoders.base import DemoEncoder as DemoEncoder_
from etrmtrm_cli.encoders.base import reset_slots as registry_reset_slots
from etrmtrm_cli.encoders.registry import register_encoder, validate_encoder_params
from etrmtrm_cli.errors import ConfigError, PluginError
from etrmtrm_cli.models.build import build_model, encoder_parameters
from etrmtrm_cli.models.losses import act_loss

NAMES = [spec.name for spec in list_encoders()]
S, K = 6, 4
ARCH = ArchConfig(hidden_size=16, num_heads=2, expansion=2.0, puzzle_emb_len=4, context_tokens=3,
                  encoder_num_layers=2, H_cycles=2, L_cycles=1, L_layers=1, halt_max_steps=3)


def demo_batch(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random grids of random sizes at the canvas' top-left, 1..K real demos per row."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.zeros(batch, K, S * S, dtype=torch.long)
    labels = torch.zeros_like(inputs)
    mask = torch.zeros(batch, K, dtype=torch.bool)
    for b in range(batch):
        n = int(torch.randint(1, K + 1, (1,), generator=g))
        mask[b, :n] = True
        for k in range(n):
            for canvas in (inputs, labels):
                h, w = (int(v) for v in torch.randint(1, S, (2,), generator=g))
                grid = torch.full((S, S), 0, dtype=torch.long)
                grid[:h, :w] = torch.randint(2, 12, (h, w), generator=g)
                grid[h, : w + 1 if w < S else w] = 1  # EOS row below
                grid[:h, w] = 1  # EOS column right of it
                canvas[b, k] = grid.reshape(-1)
    return {"demo_inputs": inputs, "demo_labels": labels, "demo_mask": mask}


def encoder(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(ARCH.model_copy(update={"recurrent_encoder_type": name}), S * S).eval()


def context_of(enc: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    carry = enc.initial_carry(batch["demo_mask"].shape[0], CPU)
    return enc(carry, batch)[0]


@pytest.mark.parametrize("name", NAMES)
def test_context_shape_and_carry(name: str) -> None:
    enc, batch = encoder(name).train(), demo_batch()  # train mode: the stats are a training metric
    carry = enc.initial_carry(3, CPU)
    context, new_carry, *stats = enc(carry, batch)
    assert context.shape == (3, ARCH.context_tokens, ARCH.hidden_size)
    assert torch.isfinite(context).all()
    assert set(new_carry) == set(carry)
    assert bool(carry) == get_encoder(name).recurrent == (enc.state_key in carry)  # what the metrics log
    for key, value in new_carry.items():
        assert value.shape == carry[key].shape
    assert len(stats) <= 1  # optional per-slot diagnostics, handed out with the context (act.py)
    for value in (stats[0] if stats else {}).values():
        assert value.shape == (3,) and not value.requires_grad and torch.isfinite(value).all()
    if name in ("recurrent_standard", "trm_style"):  # the in-tree recurrent encoders report their update
        assert set(stats[0]) == {"update_ratio"}
    elif name == "static":
        assert not stats
    assert len(enc.eval()(carry, batch)) == 2  # the stats are a training metric: eval computes none


def test_trm_style_net_is_blocks_forward() -> None:
    """trm_style runs its blocks' sublayers itself (to record each update's ratio): the same function."""
    enc, batch = encoder("trm_style").train(), demo_batch()
    carry = {k: v + torch.randn_like(v) for k, v in enc.initial_carry(3, CPU).items()}
    demos = enc.grid(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
    context, new_carry, stats = enc.read(carry, demos, batch["demo_mask"])

    def net(h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = h + injection
        for block in enc.net:
            h = block(h)
        return h

    injection = enc.summary(enc.queries.expand(3, -1, -1), demos, batch["demo_mask"])
    z_h, z_l = carry["z_e_H"], carry["z_e_L"]
    for _ in range(enc.h_cycles):
        for _ in range(enc.l_cycles):
            z_l = net(z_l, z_h + injection)
        z_h = net(z_h, z_l)
    torch.testing.assert_close(context, z_h, rtol=0, atol=0)
    torch.testing.assert_close(new_carry["z_e_L"], z_l, rtol=0, atol=0)
    assert stats["update_ratio"].shape == (3,) and bool((stats["update_ratio"] > 0).all())


@pytest.mark.parametrize("name", NAMES)
def test_empty_demo_slots_and_pad_cells_do_not_matter(name: str) -> None:
    enc, batch = encoder(name), demo_batch()
    reference = context_of(enc, batch)
    noisy = {k: v.clone() for k, v in batch.items()}
    empty = ~noisy["demo_mask"]
    noisy["demo_inputs"][empty] = torch.randint(0, 12, noisy["demo_inputs"][empty].shape)
    noisy["demo_labels"][empty] = torch.randint(0, 12, noisy["demo_labels"][empty].shape)
    torch.testing.assert_close(context_of(enc, noisy), reference)
    with torch.no_grad():  # what a PAD cell holds (its embedding) must not reach the context
        enc.grid.input_embed.weight[0].normal_()
        enc.grid.output_embed.weight[0].normal_()
    torch.testing.assert_close(context_of(enc, batch), reference)


@pytest.mark.parametrize("name", NAMES)
def test_demo_order_does_not_matter(name: str) -> None:
    enc, batch = encoder(name), demo_batch()
    perm = torch.tensor([3, 1, 0, 2])
    shuffled = {k: v[:, perm] for k, v in batch.items()}
    torch.testing.assert_close(context_of(enc, shuffled), context_of(enc, batch), rtol=1e-5, atol=1e-5)


def translated(batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each demo moved on the canvas by its own offset (input and output alike), as training data is."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in batch.items()}
    for key in ("demo_inputs", "demo_labels"):
        out[key] = out[key].view(-1, K, S, S)
    for b in range(out["demo_mask"].shape[0]):
        for k in range(K):
            used = (out["demo_inputs"][b, k] != 0) | (out["demo_labels"][b, k] != 0)
            if not used.any():  # an empty slot
                continue
            rows, cols = int(used.any(1).nonzero().max()) + 1, int(used.any(0).nonzero().max()) + 1
            shift = (int(torch.randint(0, S - rows + 1, (1,), generator=g)),
                     int(torch.randint(0, S - cols + 1, (1,), generator=g)))
            for key in ("demo_inputs", "demo_labels"):
                out[key][b, k] = out[key][b, k].roll(shift, dims=(0, 1))
    for key in ("demo_inputs", "demo_labels"):
        out[key] = out[key].reshape(-1, K, S * S)
    return out


@pytest.mark.parametrize("shifted", [False, True])
def test_packed_cropped_grid_encoder_equals_the_full_masked_computation(shifted: bool) -> None:
    enc, batch = encoder("static"), demo_batch(batch=6, seed=3)
    if shifted:
        batch = translated(batch, seed=4)
    grid = enc.grid
    packed = grid(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])  # (B, K, D)
    # Reference: every slot, the whole S x S canvas, PAD keys masked, mean over real tokens.
    tokens = torch.cat([batch["demo_inputs"], batch["demo_labels"]], dim=2).flatten(0, 1)  # (B*K, 2S²)
    real = tokens != 0
    x = torch.cat([grid.input_embed(tokens[:, : S * S]), grid.output_embed(tokens[:, S * S :])], 1) * grid.embed_scale
    rope = grid.rotary()
    for block in grid.blocks:
        x = block(x, rope=rope, key_mask=real)
    full = (x * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
    full = full.view(6, K, -1) * batch["demo_mask"].unsqueeze(-1)
    torch.testing.assert_close(packed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_gives_every_encoder_parameter_a_gradient(name: str, dtype: str) -> None:
    exp = tiny("E0b", [f"arch.recurrent_encoder_type={name}", f"arch.forward_dtype={dtype}"])
    torch.manual_seed(0)
    model = build_model(exp, S * S, num_puzzle_ids=8).train()
    batch = demo_batch(batch=4, seed=1)
    inputs = batch["demo_inputs"][:, 0].clone()
    labels = batch["demo_labels"][:, 0].clone().masked_fill(batch["demo_labels"][:, 0] == 0, -100)
    batch.update(inputs=inputs, labels=labels, puzzle_ids=torch.arange(4))
    carry = model.initial_carry(batch)
    for _ in range(2):  # the second step starts from a carried (detached) encoder state
        model.zero_grad()
        carry, outputs = model(carry, batch, torch.Generator().manual_seed(0))
        loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps)
        loss.backward()
        for pname, param in model.provider.named_parameters():
            assert param.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{name}: {pname}"


def parameter_names(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """The names `model.named_parameters()` gives these parameters; one it does not own is '<foreign>'."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id.get(id(p), "<foreign>") for p in params]


@pytest.mark.parametrize("name", NAMES)
def test_encoder_parameters_are_exactly_the_provider_parameters(name: str) -> None:
    model = build_model(tiny("E0b", [f"arch.recurrent_encoder_type={name}"]), S * S, num_puzzle_ids=8)
    everything = [n for n, _ in model.named_parameters()]
    provider = {n for n in everything if n.startswith("provider.")}
    decoder = {n for n in everything if n.startswith("decoder.")}
    assert provider and decoder and provider | decoder == set(everything)  # the model is decoder + encoder
    names = parameter_names(model, encoder_parameters(model))
    assert len(names) == len(set(names)), f"listed twice: {sorted(names)}"
    assert set(names) == provider
    assert not set(names) & decoder


def test_p0_has_no_encoder_parameters() -> None:
    model = build_model(tiny("P0"), S * S, num_puzzle_ids=8)
    assert "provider.weights" in model.state_dict()  # the puzzle table exists, as a buffer (SignSGD trains it)
    assert encoder_parameters(model) == []


@pytest.mark.parametrize("name", [n for n in NAMES if get_encoder(n).recurrent])
def test_carry_reset_touches_exactly_the_halted_slots(name: str) -> None:
    enc = encoder(name)
    init = enc.initial_carry(4, CPU)
    carry = {k: v + torch.randn_like(v) for k, v in init.items()}  # a carry far from the init state
    reset = torch.tensor([True, False, True, False])
    out = enc.reset_carry(reset, carry)
    for key in carry:
        torch.testing.assert_close(out[key][reset], init[key][reset])
        torch.testing.assert_close(out[key][~reset], carry[key][~reset])


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ConfigError, match=re.escape(f"unknown encoder 'gru' (valid: {', '.join(NAMES)};")):
        get_encoder("gru")
    duplicate = (r"'static' is registered twice: by etrmtrm_cli.encoders.static:StaticEncoder and by "
                 r"test_encoders:test_unknown_and_duplicate_names.<locals>.Impostor")
    with pytest.raises(PluginError, match=duplicate):
        @register_encoder("static", BaseModel, recurrent=False)
        class Impostor(nn.Module):
            pass
    with pytest.raises(ConfigError, match=r"arch.encoder_params.bogus: .*encoder 'static' takes: set_layers"):
        validate_encoder_params("static", {"bogus": 1})


def test_a_read_that_breaks_its_contract_is_named() -> None:
    """A (B, D) context or a bare tensor fails at the encoder, not later as a prefix-length error; a stat that is
    not one float per slot fails before it is logged as a mean of something else."""
    enc, batch = encoder("static"), demo_batch()
    read = r"etrmtrm_cli\.encoders\.static\.StaticEncoder\.read"
    enc.read = lambda carry, demos, mask: (demos.mean(1), carry)  # (B, D): no context-token axis
    with pytest.raises(PluginError, match=read + r" returned a context of shape \(3, 16\); expected "
                                                 r"\(B, C, D\) = \(3, 3, 16\)"):
        enc({}, batch)
    enc.read = lambda carry, demos, mask: demos[:, :3]  # a context without its carry
    with pytest.raises(PluginError, match=read + r" must return \(context, carry\) or \(context, carry, stats\), "
                                                 r"not Tensor"):
        enc({}, batch)
    context = torch.zeros(3, 3, 16)
    for stats, said in (({"update_ratio": torch.zeros(3, 16)}, r"stats\['update_ratio'\] of shape \(3, 16\)"),
                        ({"hits": torch.zeros(3, dtype=torch.long)}, r"stats\['hits'\] of shape \(3,\) torch.int64"),
                        ({"ratio": 0.5}, r"stats\['ratio'\] of float"), ([0.5], "stats of type list")):
        enc.read = lambda carry, demos, mask, stats=stats: (context, carry, stats)
        with pytest.raises(PluginError, match=said):
            enc({}, batch)
    enc.read = lambda carry, demos, mask: (context, carry, {"ratio": torch.ones(3)})
    assert enc({}, batch)[2]["ratio"].shape == (3,)  # the contract kept: passed on


def test_registration_requires_a_state_key_exactly_for_recurrent_encoders() -> None:
    """compare and the carry metrics tell a recurrent run by its state_key: a mismatch is refused at import."""
    with pytest.raises(PluginError, match=r"'carryless' .* recurrent=True but its class sets no state_key"):
        @register_encoder("carryless", BaseModel, recurrent=True)
        class Carryless(nn.Module):
            pass
    with pytest.raises(PluginError, match=r"recurrent=False but its class sets state_key = 'z'"):
        @register_encoder("stateful", BaseModel, recurrent=False)
        class Stateful(nn.Module):
            state_key = "z"
    assert [spec.name for spec in list_encoders()] == NAMES  # neither was registered


class CarryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Carried(nn.Module):  # the carry protocol of a recurrent encoder, with a state_key that it may not keep
    state_key = "h"

    def __init__(self, arch: ArchConfig, params: BaseModel, seq_len: int) -> None:
        super().__init__()

    def initial_carry(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"hidden": torch.zeros(batch_size, 1)}

    def reset_carry(self, reset: torch.Tensor, carry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return carry


def test_a_recurrent_encoder_defines_its_carry_and_keeps_its_state_key_in_it() -> None:
    """Without these checks a recurrent encoder trained without ever resetting its carry (DemoEncoder's stateless
    reset_carry), or failed at its first step with a KeyError naming its state_key."""
    with pytest.raises(PluginError, match=r"'no_reset' .* is recurrent but does not define its own reset_carry "
                                          r"\(base.reset_slots"):
        @register_encoder("no_reset", CarryConfig, recurrent=True)
        class NoReset(DemoEncoder_):
            state_key = "h"

            def initial_carry(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
                return {"h": torch.zeros(batch_size, 1)}
    exp = tiny("E0b", ["decoder=none"])
    model = build_model(exp, exp.data.max_grid_size**2, 1)
    model.provider = Carried(exp.arch, CarryConfig(), 0)
    with pytest.raises(PluginError, match=r"test_encoders\.Carried: its state_key 'h' is not an entry of its "
                                          r"initial_carry \(keys: \['hidden'\]\)"):
        model.initial_carry({"inputs": torch.ones(3, 4, dtype=torch.long)})
    assert [spec.name for spec in list_encoders()] == NAMES


def test_a_carry_that_breaks_its_contract_is_named() -> None:
    """A reset or a read that returns a carry with other keys fails at the encoder, not steps later as a KeyError
    in the training step's carry metrics."""
    exp = tiny("E0b", ["decoder=none"])
    model = build_model(exp, exp.data.max_grid_size**2, 1)
    batch = demo_batch() | {"inputs": torch.ones(3, exp.data.max_grid_size**2, dtype=torch.long),
                            "puzzle_ids": torch.zeros(3, dtype=torch.long)}
    carry = model.initial_carry(batch)
    enc = model.provider
    name = r"etrmtrm_cli\.encoders\.recurrent_standard\.RecurrentStandardEncoder"
    good_reset = enc.reset_carry
    enc.reset_carry = lambda reset, c: {"h": c["z_e"]}
    with pytest.raises(PluginError, match=name + r"\.reset_carry returned a carry with keys \['h'\]; expected the "
                                                 r"keys of its initial_carry, \['z_e'\]"):
        model(carry, batch)
    enc.reset_carry = lambda reset, c: registry_reset_slots(reset, c, {"h": enc.z_init})
    with pytest.raises(PluginError, match=r"reset_slots: no init state for carry entries \['z_e'\] \(the init "
                                          r"states given are \['h'\]\)"):
        model(carry, batch)
    enc.reset_carry = good_reset
    context = torch.zeros(3, enc.context_tokens, enc.hidden_size)
    enc.read = lambda c, demos, mask: (context, None)
    with pytest.raises(PluginError, match=name + r"\.read returned a carry with keys NoneType"):
        model(carry, batch)
    enc.read = lambda c, demos, mask: (context, {"z_e": c["z_e"][:1]})
    with pytest.raises(PluginError, match=name + r"\.read returned carry\['z_e'\] of shape \(1, "):
        model(carry, batch)
    # a carry whose rows change shape (here a reset broadcast to (B, B, D)): named where it happens, not as a
    # context of the wrong shape later
    enc.reset_carry = lambda reset, c: {"z_e": c["z_e"].new_zeros(3, 3, 1)}
    with pytest.raises(PluginError, match=name + r"\.reset_carry returned carry\['z_e'\] of shape \(3, 3, 1\); "
                                                 r"expected a tensor of the shape it was handed"):
        model(carry, batch)
    enc.reset_carry = good_reset
    forward = enc.forward  # a provider that is not a DemoEncoder: checked by the ACT model
    enc.forward = lambda c, b: (context, {})
    with pytest.raises(PluginError, match=name + r"\.forward returned a carry with keys \[\]; expected"):
        model(carry, batch)
    enc.forward = forward


class Loose(BaseModel):  # pydantic's default: unknown keys ignored, fields mutable
    scale: float = 1.0


class Frozen(Loose):
    model_config = ConfigDict(frozen=True)


class Forbidding(Loose):
    model_config = ConfigDict(extra="forbid")


class Both(Loose):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Inherited(Both):  # pydantic merges model_config down the classes
    extra_setting: int = 2


@pytest.mark.parametrize("config", [Loose, Frozen, Forbidding, dict, None])
def test_registration_requires_a_frozen_pydantic_config_that_refuses_unknown_keys(config: object) -> None:
    """A typo in arch.encoder_params would otherwise be kept in config.json and ignored by the encoder."""
    with pytest.raises(PluginError, match=r"'loose' .*: its config .* must be a pydantic model that is frozen and "
                                          r"refuses unknown keys .*ConfigDict\(frozen=True, extra='forbid'\)"):
        @register_encoder("loose", config, recurrent=False)  # type: ignore[arg-type]
        class LooseEncoder(nn.Module):
            pass
    assert [spec.name for spec in list_encoders()] == NAMES


@pytest.mark.parametrize("config", [Both, Inherited])
def test_a_frozen_config_that_refuses_unknown_keys_registers(config: type[BaseModel]) -> None:
    with mock.patch.dict(registry._ENCODERS):
        @register_encoder("strict", config, recurrent=False)
        class StrictEncoder(nn.Module):
            pass
        assert get_encoder("strict").config_cls is config
    assert [spec.name for spec in list_encoders()] == NAMES


def test_the_listed_defaults_of_an_encoders_settings_are_values() -> None:
    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        width: int
        dims: list[int] = Field(default_factory=lambda: [4, 8])
        scale: float = 0.5

    spec = registry.EncoderSpec("settings", Settings, nn.Module, False, "test:Settings")
    assert registry.config_defaults(spec) == {"width": "required", "dims": [4, 8], "scale": 0.5}


def test_a_constructor_with_the_wrong_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class TwoArguments(nn.Module):
        def __init__(self, arch: ArchConfig, params: BaseModel) -> None:
            super().__init__()

    class NoSettings(BaseModel):
        pass

    spec = registry.EncoderSpec("two_arguments", NoSettings, TwoArguments, False, "test:TwoArguments")
    monkeypatch.setitem(registry._ENCODERS, spec.name, spec)
    arch = ArchConfig(recurrent_encoder_type="two_arguments")
    with pytest.raises(PluginError, match=r"'two_arguments' \(test:TwoArguments\): its constructor must take "
                                          r"\(arch, params, seq_len\)"):
        build_encoder(arch, 16)


PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from torch import nn

from etrmtrm_cli.encoders.base import DemoEncoder
from etrmtrm_cli.encoders.registry import register_encoder


class MeanConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    scale: float = 1.0


@register_encoder("mean_plugin", MeanConfig, recurrent=False)
class MeanEncoder(DemoEncoder):
    """The mean demo vector, plus a learned offset per context slot."""

    def __init__(self, arch, params, seq_len):
        super().__init__(arch, seq_len)
        self.scale = params.scale
        self.slots = nn.Parameter(0.02 * __import__("torch").randn(arch.context_tokens, arch.hidden_size))

    def read(self, carry, demos, demo_mask):
        weights = demo_mask.to(demos.dtype).unsqueeze(-1)
        mean = (demos * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
        return self.scale * mean + self.slots, carry
'''


def installed(site: Path, source: str) -> dict[str, str]:
    """A real installed-package layout: a module plus a .dist-info with an etrmtrm.encoders entry point."""
    site.mkdir()
    (site / "mean_plugin.py").write_text(source)
    info = site / "mean_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mean-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[etrmtrm.encoders]\nmean_plugin = mean_plugin\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "250"}


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return installed(tmp_path / "site", PLUGIN)


def etrmtrm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etrmtrm_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("change", "said"), [
    (("return self.scale * mean + self.slots, carry", "return mean[:, 0], carry"),  # (B, D): no token axis
     r"mean_plugin\.MeanEncoder\.read returned a context of shape \(4, 16\); expected \(B, C, D\)"),
    (("return self.scale * mean + self.slots, carry", "return self.scale * mean + self.slots, {'z': mean}"),
     r"mean_plugin\.MeanEncoder\.read returned a carry with keys \['z'\]; expected the keys of its "
     r"initial_carry, \[\]"),
    (("@register_encoder(\"mean_plugin\", MeanConfig, recurrent=False)", ""),  # the decorator forgotten
     r"entry point 'mean_plugin' \(mean_plugin\) of etrmtrm.encoders registered no encoder: decorate its class"),
    (("    scale: float = 1.0", "    scale: float = 1.0\n    bad = undefined_name"),  # fails on import
     r"entry point 'mean_plugin' \(mean_plugin\) of etrmtrm.encoders failed \(.*mean_plugin.py, line 12\): "
     r"NameError: name 'undefined_name' is not defined"),
])
def test_a_broken_plugin_is_one_line_naming_it(tmp_path: Path, change: tuple[str, str], said: str) -> None:
    assert change[0] in PLUGIN
    env = installed(tmp_path / "site", PLUGIN.replace(*change))
    out = etrmtrm(env, "train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS), "--runs-dir",
                  str(tmp_path / "runs"), "--max-steps", "2", "--set", "decoder=none", "--set",
                  "arch.recurrent_encoder_type=mean_plugin", "--quiet")
    assert out.returncode == 1, out.stderr
    assert re.search(said, " ".join(out.stderr.split())), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3, out.stderr
    assert not out.stderr.startswith(f"error: {EXPERIMENTS}")  # the plugin's fault, not the experiments file's


def test_entry_point_encoder_is_listed_and_trains(plugin_env: dict[str, str], tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "etrmtrm_cli", "encoders"], env=plugin_env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "mean_plugin" in listed.stdout and "scale=1" in listed.stdout and "entry point" in listed.stdout
    trained = subprocess.run(
        [sys.executable, "-m", "etrmtrm_cli", "train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS),
         "--runs-dir", str(tmp_path / "runs"), "--max-steps", "3", "--set", "decoder=none",
         "--set", "arch.recurrent_encoder_type=mean_plugin", "--set", "arch.encoder_params={scale=2.0}", "--quiet"],
        env=plugin_env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "runs" / "E0b" / "model.safetensors").is_file()
    config = (tmp_path / "runs" / "E0b" / "config.json").read_text()
    assert '"recurrent_encoder_type": "mean_plugin"' in config and '"scale": 2.0' in config
    meta = json.loads((tmp_path / "runs" / "E0b" / "meta.json").read_text())
    assert meta["encoder"] == {"name": "mean_plugin", "origin": "mean_plugin:MeanEncoder (entry point mean_plugin = "
                               "mean_plugin)", "package": "mean-plugin 1.0"}  # which version of the plugin ran


def test_reset_slots_resets_a_carry_of_any_shape() -> None:
    """A (B, D) carry, a GRU's hidden vector: the reset flag was viewed as (B, 1, 1) and broadcast it to (B, B, D)."""
    carry = {"h": torch.arange(6.0).view(3, 2), "z": torch.ones(3, 2, 2)}
    init = {"h": torch.full((2,), -1.0), "z": torch.zeros(2, 2)}
    out = registry_reset_slots(torch.tensor([True, False, True]), carry, init)
    assert out["h"].tolist() == [[-1.0, -1.0], [2.0, 3.0], [-1.0, -1.0]]
    assert out["z"].shape == (3, 2, 2) and out["z"][:, 0, 0].tolist() == [0.0, 1.0, 0.0]
