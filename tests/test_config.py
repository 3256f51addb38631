"""experiments.toml: the real file validates everywhere; every kind of mistake gets a one-line error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from etrmtrm_cli.config import SweepConfig
from etrmtrm_cli.encoders import list_encoders
from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.experiments_file import load_experiments

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "experiments.toml"

MINIMAL = """
[base]
decoder = "none"
[base.arch]
recurrent_encoder_type = "static"
[experiments.E0a]
arch = {{ recurrent_encoder_type = "static" }}
[experiments.E0b]
{body}
[queues]
week1 = ["E0a", "E0b"]
[profiles.tiny]
train = {{ batch_divisor = 64 }}
"""


def write(tmp_path: Path, body: str = "", text: str | None = None) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(text if text is not None else MINIMAL.format(body=body))
    return path


def resolve_error(tmp_path: Path, body: str, *, overrides: tuple[str, ...] = (), world_size: int = 1) -> str:
    file = load_experiments(write(tmp_path, body))
    with pytest.raises(ConfigError) as err:
        file.resolve("E0b", "tiny", overrides, world_size=world_size)
    return str(err.value)


def test_every_experiment_validates_under_every_profile() -> None:
    file = load_experiments(REAL)
    assert set(file.profiles) == {"paper", "cpu", "headroom", "tiny"}
    for profile in file.profiles:
        for exp_id in file.ids:
            exp = file.resolve(exp_id, profile)
            assert exp.id == exp_id and exp.profile == profile


def test_the_plan_is_all_there() -> None:
    file = load_experiments(REAL)
    expected = ["P0", "E0a", "E0b", "E0c", "E1a", "E1b", *[f"E2{c}" for c in "abcde"], *[f"E3{c}" for c in "abcd"],
                "E4a", "E4b", "E4c"]
    assert file.ids == expected
    assert file.queues == {
        "e0": ("E0a", "E0b", "E0c"),
        "week1": ("E0a", "E0b", "E2b"),
        "week2": ("E1a", "E2c", "E2d", "E3b"),
        "week3": ("E2a", "E2e", "E3c", "E4c"),
    }


def test_plan_values_at_paper_scale() -> None:
    file = load_experiments(REAL)
    get = lambda exp_id: file.resolve(exp_id, "paper")  # noqa: E731
    assert get("E0a").arch.recurrent_encoder_type == "static"
    assert get("E0b").arch.recurrent_encoder_type == "recurrent_standard"
    assert get("E0c").arch.recurrent_encoder_type == "trm_style"
    # compare's parent comparisons: Variant A against ETRM, Variant B and every later variant against Variant A
    assert get("E0b").parent == "E0a"
    assert {get(exp_id).parent for exp_id in ("E0c", "E1a", "E2a", "E3b", "E4c")} == {"E0b"}
    assert (get("E0b").arch.halt_max_steps, get("E0b").arch.halt_exploration_prob) == (16, 0.5)
    assert get("E1a").arch.encoder_num_layers == 4
    assert (get("E1b").arch.encoder_norm_style, get("E1b").train.batch_size) == ("pre", 128)
    assert [get(f"E2{c}").arch.halt_max_steps for c in "abcde"] == [8, 16, 32, 16, 16]
    assert [get(f"E2{c}").arch.halt_exploration_prob for c in "abcde"] == [0.5, 0.5, 0.5, 0.7, 0.0]
    assert [get(f"E3{c}").train.lr for c in "abcd"] == [1e-4, 5e-5, 2e-4, 1e-4]
    assert get("E3d").train.encoder_lr_scale == 0.5
    assert [get(f"E4{c}").train.batch_size for c in "abc"] == [128, 256, 512]
    common = get("E0b")
    assert (common.data.train_groups, common.data.eval_groups) == (32, 32)
    assert (common.train.epochs, common.train.eval_interval, common.train.grad_clip_norm) == (20000, 1000, 1.0)
    assert common.arch.hidden_size == 512 and common.arch.encoder_type == "standard"
    assert common.decoder == "P0" and get("P0").model == "trm"


def test_profiles_keep_batch_ratios() -> None:
    file = load_experiments(REAL)
    sizes = [file.resolve(f"E4{c}", "cpu").train.batch_size for c in "abc"]
    assert sizes[1] == 2 * sizes[0] and sizes[2] == 2 * sizes[1]


def test_override_goes_through_validation(tmp_path: Path) -> None:
    file = load_experiments(write(tmp_path))
    assert file.resolve("E0b", "tiny", ["arch.halt_max_steps=8"]).arch.halt_max_steps == 8
    assert file.resolve("E0b", "tiny", ["arch.recurrent_encoder_type=trm_style"]).arch.recurrent_encoder_type == (
        "trm_style"
    )
    message = resolve_error(tmp_path, "", overrides=("arch.halt_exploration_prob=1.5",))
    assert "E0b: arch.halt_exploration_prob" in message and "(set in --set)" in message


def test_encoder_errors_name_the_layer_and_a_near_name(tmp_path: Path) -> None:
    message = resolve_error(tmp_path, "", overrides=("arch.recurrent_encoder_type=recurent_standard",))
    assert "E0b: arch.recurrent_encoder_type: unknown encoder 'recurent_standard'; did you mean " \
           "'recurrent_standard'?" in message and message.endswith("(set in --set)"), message
    # a misspelt setting: its layer, the encoder type's layer, and the near name
    body = "arch = { recurrent_encoder_type = 'static', encoder_params = { set_layer = 1 } }"
    message = resolve_error(tmp_path, body)
    assert "arch.encoder_params.set_layer: Extra inputs are not permitted; did you mean 'set_layers'?" in message
    assert message.endswith("(set in experiments.E0b; arch.recurrent_encoder_type set in experiments.E0b)")
    # settings the experiment gives one encoder, judged by another that --set chose: both layers are named
    message = resolve_error(tmp_path, "arch = { encoder_params = { set_layers = 1 } }",
                            overrides=("arch.recurrent_encoder_type=trm_style",))
    assert message.endswith("(set in experiments.E0b; arch.recurrent_encoder_type set in --set)"), message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("arch = { halt_max_step = 8 }", "arch.halt_max_step: unknown key; did you mean 'halt_max_steps'?"),
        ("arch = { halt_max_steps = 'many' }", "arch.halt_max_steps: Input should be a valid integer"),
        ("train = { lr = 0.0 }", "train.lr: Input should be greater than 0"),
        ("train = { lr = -1e-4 }", "train.lr: Input should be greater than 0"),
        ("arch = { halt_exploration_prob = -0.1 }", "arch.halt_exploration_prob: Input should be greater than or"),
        ("arch = { halt_exploration_prob = 1.1 }", "arch.halt_exploration_prob: Input should be less than or"),
        ("data = { eval_groups = 0 }", "data.eval_groups"),
        ("data = { query_mode = 'all' }", "data.query_mode: Input should be 'test' or 'leave_one_out'"),
        ("train = { global_batch_size = 100 }", "not divisible by the profile's batch_divisor 64"),
        ("arch = { recurrent_encoder_type = 'lstm' }",
         f"unknown encoder 'lstm' (valid: {', '.join(spec.name for spec in list_encoders())};"),
        ("arch = { encoder_params = { encoder_h_cycles = 2 } }", "arch.encoder_params.encoder_h_cycles"),
        ("arch = { hidden_size = 30, num_heads = 4 }", "hidden_size 30 is not divisible by num_heads 4"),
        ("learning_rate = 1e-3", "learning_rate: unknown key"),
        ("train = { lr = inf }", "train.lr: Input should be a finite number"),
        # a section that is not a table would replace [base.arch] whole, not be one wrong value
        ("arch = 5", "arch: must be a table of settings, not 5 (set in experiments.E0b)"),
        ("id = 'E0zz'", "id: not a setting, the experiment's table name (set in experiments.E0b)"),
        ("profile = 'cpu'", "profile: not a setting, chosen with --profile (set in experiments.E0b)"),
        ("decoder = 'P9'", "decoder: 'P9' is neither an experiment of this file nor a file here"),
    ],
)
def test_bad_values_name_file_experiment_and_key(tmp_path: Path, body: str, expected: str) -> None:
    message = resolve_error(tmp_path, body)
    assert message.startswith(f"{tmp_path / 'experiments.toml'}: E0b: "), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("override", "expected"), [
    ("id=../evil", "id: not a setting, the experiment's table name (set in --set)"),
    ("parent=E0z", "parent: unknown experiment 'E0z'; did you mean 'E0b'? (set in --set)"),
    ("decoder=E0c", "decoder: 'E0c' is neither an experiment of this file nor a file here; did you mean 'E0b'?"),
    ("train=1", "train: must be a table of settings, not 1 (set in --set)"),
    ("data.eval_sources=['arc-agi-9']", "data.eval_sources: 'arc-agi-9' is neither one of arc-agi-1, arc-agi-2 nor a "
                                        "folder of ARC task JSON files here; did you mean 'arc-agi-2'? (set in --set)"),
])
def test_bad_overrides_are_refused_as_the_file_refuses_them(tmp_path: Path, override: str, expected: str) -> None:
    message = resolve_error(tmp_path, "", overrides=(override,))
    assert expected in message, message


def test_set_seed_and_seeds_together_are_refused(tmp_path: Path) -> None:
    file = load_experiments(write(tmp_path))
    with pytest.raises(ConfigError, match=r"--set seed=\.\.\. and --seeds both choose the seed"):
        file.jobs("E0b", "tiny", ["seed=5"], [0, 1])
    assert [exp.seed for exp, _ in file.jobs("E0b", "tiny", ["seed=5"], None)] == [5]


def test_batch_must_divide_by_world_size(tmp_path: Path) -> None:
    message = resolve_error(tmp_path, "train = { global_batch_size = 192 }", world_size=5)
    assert "batch 3 is not divisible by the world size 5" in message
    # the eval batch too: before, a 2-process run with eval batch 5 failed at its first eval, before any checkpoint
    message = resolve_error(tmp_path, "train = { eval_batch_size = 5 }", world_size=2)
    assert "train.eval_batch_size: 5 is not divisible by the world size 2" in message


def test_error_says_which_layer_set_the_value(tmp_path: Path) -> None:
    text = MINIMAL.format(body="").replace('decoder = "none"', 'decoder = "none"\nseed = "x"')
    file = load_experiments(write(tmp_path, text=text))
    with pytest.raises(ConfigError, match=r"E0b: seed: .*\(set in base\)"):
        file.resolve("E0b", "tiny")


def test_unknown_experiment_suggests_the_closest(tmp_path: Path) -> None:
    file = load_experiments(write(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown experiment or queue 'e0a'; did you mean 'E0a'\?"):
        file.targets("e0a")
    assert file.targets("week1") == ("E0a", "E0b")
    assert file.targets("E0b") == ("E0b",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[experiments.E0a]\n[experiments.E0a]\n", "not valid TOML"),
        ("[experiments.E0a]\n[experiments.e0a]\n", "duplicate experiment ID 'e0a'"),
        ("[experiments.E0a]\n[queues]\nweek1 = ['E0a', 'E0x']\n", "queues.week1: unknown experiment 'E0x'"),
        ("[experiments.E0a]\n[profiles.cpu]\narch = { halt_max_steps = 4 }\n",
         "profiles.cpu.arch.halt_max_steps: a profile changes sizes, never what an experiment compares"),
        # P0 reads its queries leave-one-out, the E arms from the test pairs: a profile may not change either
        ("[experiments.E0a]\n[profiles.cpu]\ndata = { query_mode = 'test' }\n",
         "profiles.cpu.data.query_mode: a profile changes sizes, never what an experiment compares"),
        ("[experiment.E0a]\n", "unknown top-level table(s) experiment"),
        ("[base]\n", "defines no [experiments.<ID>] table"),
        ("[experiments.E0a]\n[queues]\nweek1 = []\n", "queues.week1: empty"),
        ("[experiments.E0a]\n[queues]\nweek1 = ['E0a', 'E0a']\n", "queues.week1: lists 'E0a' twice"),
    ],
)
def test_structural_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiments(write(tmp_path, text=text))
    assert expected in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such experiments file"):
        load_experiments(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="/dev/null: not a file"):  # it exists: "no such file" sent readers astray
        load_experiments(Path("/dev/null"))


def test_a_byte_order_mark_is_not_a_toml_error(tmp_path: Path) -> None:
    """An editor that writes a UTF-8 BOM made line 1, column 1 'Invalid statement', with nothing to see there."""
    path = tmp_path / "experiments.toml"
    path.write_text("\ufeff" + REAL.read_text(), encoding="utf-8")
    assert load_experiments(path).ids == load_experiments(REAL).ids


@pytest.mark.parametrize(
    ("section", "model", "key", "value"),
    [("arch", "ArchConfig", "hidden_size", 1), ("train", "TrainConfig", "lr", 1.0),
     ("data", "DataConfig", "num_aug", 0), (None, "Experiment", "seed", 1)],
)
def test_config_is_frozen(section: str | None, model: str, key: str, value: object) -> None:
    exp = load_experiments(REAL).resolve("E0b", "tiny")
    target = exp if section is None else getattr(exp, section)
    before = getattr(target, key)
    assert before != value
    # Assignment goes straight to pydantic (not through load_experiments), so its error is pydantic's own.
    with pytest.raises(ValidationError) as err:
        setattr(target, key, value)
    assert err.value.title == model
    assert [(e["type"], e["loc"]) for e in err.value.errors()] == [("frozen_instance", (key,))]
    assert key in str(err.value) and "frozen" in str(err.value)
    assert getattr(target, key) == before


def test_runs_with_seeds_are_seed_major() -> None:
    # A sweep cut short must leave the arms with equal numbers of seeds: seed 0 of every arm, then seed 1.
    jobs = load_experiments(REAL).jobs("week1", "tiny", [], seeds=[0, 1])
    assert [(exp.id, exp.seed, per_seed) for exp, per_seed in jobs] == [
        ("E0a", 0, True), ("E0b", 0, True), ("E2b", 0, True), ("E0a", 1, True), ("E0b", 1, True), ("E2b", 1, True)]


@pytest.mark.parametrize("setting", ["train.lr=true", "seed=true", "arch.hidden_size=false", "train.time_min=true"])
def test_a_boolean_is_not_read_as_a_number(setting: str) -> None:
    """pydantic reads true as 1: `--set train.lr=true` trained at a learning rate of 1.0."""
    key = setting.split("=")[0]
    if key == "train.time_min":  # not a training setting: the sweep's, with its int | None
        with pytest.raises(ValidationError, match="a number, not true"):
            SweepConfig(time_min=True)
        return
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: a number, not (true|false) \(set in --set\)"):
        load_experiments(REPO / "experiments.toml").resolve("E0a", "tiny", [setting])


@pytest.mark.parametrize(("text", "said"), [
    (MINIMAL.format(body='parent = "E0b"'), r"experiments.E0b.parent: the parents come back round \(E0b -> E0b\)"),
    (MINIMAL.format(body='parent = "E0a"').replace('[experiments.E0a]', '[experiments.E0a]\nparent = "E0b"'),
     r"experiments.E0b.parent: the parents come back round \(E0a -> E0b -> E0a\)"),
    (MINIMAL.format(body="").replace('decoder = "none"', 'decoder = "none"\nparent = "E0a"'),
     r"base.parent: the parents come back round \(E0a -> E0a\)"),
])
def test_parents_that_come_back_round_are_refused(tmp_path: Path, text: str, said: str) -> None:
    """A run compared with itself: the plan's comparison silently disappeared."""
    with pytest.raises(ConfigError, match=said):
        load_experiments(write(tmp_path, text=text))


def test_a_profile_named_auto_is_refused(tmp_path: Path) -> None:
    """--profile auto picks paper or cpu, so a [profiles.auto] was accepted and could never be used."""
    text = MINIMAL.format(body="") + "[profiles.auto]\ntrain = { batch_divisor = 64 }\n"
    with pytest.raises(ConfigError, match=r"profiles.auto: 'auto' is --profile's choice of paper or cpu"):
        load_experiments(write(tmp_path, text=text))


def test_a_setting_of_several_kinds_gets_one_line_at_its_own_key(tmp_path: Path) -> None:
    """train_groups is an int or 'all': pydantic's two errors read as two made-up keys (data.train_groups.int)."""
    said = resolve_error(tmp_path, "", overrides=("data.train_groups=ALL",))
    assert said.splitlines() == [f"{tmp_path / 'experiments.toml'}: E0b: data.train_groups: Input should be a valid "
                                 "integer, unable to parse string as an integer; or 'all' (set in --set)"], said
