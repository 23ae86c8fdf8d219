"""The run spec (`critkl.runs.spec.Sweep`), config files and overrides, and the one way into a
fine-tuning run from the command line."""

import argparse
import dataclasses
import json

import pytest

from critkl.commands import finetuning as commands
from critkl.config import HYPER_NAMES, RLConfig, RLHyper
from critkl.loss_config import LossConfig
from critkl.runs import config_files
from critkl.runs.spec import Sweep


def _spec_of_command(argv: list[str]) -> Sweep:
    parser = argparse.ArgumentParser()
    parser.set_defaults(command="sweep")
    commands.add_flags(parser, lists=True)
    return commands.spec_from(parser.parse_args(argv))


def test_the_dict_form_round_trips_through_json():
    spec = Sweep("mini-n3", RLConfig(episodes=64, value_hidden_sizes=(32, 16),
                                     loss=LossConfig(kl_kind="exact", weight_targets=("kl", "clip")),
                                     causal_keys=((1, "operand", "a", 3),)),
                 RLHyper(learning_rate=1e-4), [3, 1], {"beta": [0, 150], "kl_coef": [0.5]})
    again = Sweep.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert [run.name for run in again.runs()] == [run.name for run in spec.runs()]


def test_the_grid_has_one_order_however_it_is_written():
    """config.json sorts its keys: the runs (and a resumed checkpoint) must not depend on it."""
    written = Sweep(grid={"learning_rate": [1e-4, 3e-4], "kl_coef": [0, 1], "beta": [0.0]})
    sorted_keys = Sweep.from_dict(json.loads(json.dumps(written.to_dict(), sort_keys=True)))
    assert [name for name, _ in sorted_keys.grid] == ["learning_rate", "kl_coef", "beta"]
    assert [run.name for run in sorted_keys.runs()] == [run.name for run in written.runs()]


@pytest.mark.parametrize("values, message", [
    ({"rl": {"episods": 3}}, "config.rl: unknown field(s) episods (allowed: task,"),
    ({"rl": {"episodes": "3"}}, "config.rl.episodes: '3' is not an integer"),
    ({"rl": {"loss": {"kl_kind": "k9"}}}, "kl_kind must be one of"),
    ({"base": {"loss": {"kl_coef": "high"}}}, "config.base.loss.kl_coef: 'high' is not a number"),
    ({"grid": {"bta": [1.0]}}, "unknown hyperparameters ['bta']"),
    ({"grid": {"gamma": [1.5]}}, "gamma=1.5 is outside"),
    ({"seeds": [1, 1]}, "repeat a seed"),
    ({"seeds": "0"}, "config.seeds: expected a list"),
    ([1, 2], "expected a table of Sweep fields"),
])
def test_a_bad_spec_is_refused_naming_the_field(values, message):
    with pytest.raises(ValueError) as error:
        Sweep.from_dict(values)
    assert message in str(error.value)


def test_overrides_are_parsed_like_the_value_they_replace():
    defaults = Sweep().to_dict()
    parse = lambda text: config_files.parse_override(text, defaults)  # noqa: E731
    assert parse("rl.episodes=64") == {"rl": {"episodes": 64}}
    assert parse("rl.loss.prioritized=false") == {"rl": {"loss": {"prioritized": False}}}
    assert parse("rl.value_hidden_sizes=32,16") == {"rl": {"value_hidden_sizes": [32, 16]}}
    assert parse("base.loss.kl_coef=0.5") == {"base": {"loss": {"kl_coef": 0.5}}}
    assert parse("grid.beta=0,150") == {"grid": {"beta": [0.0, 150.0]}}
    assert parse("seeds=4,5") == {"seeds": [4, 5]}
    for text, message in [("rl.epsiodes=3", "unknown key 'epsiodes' in rl (allowed: task,"),
                          ("rl.episodes=many", "rl.episodes='many' is not an integer"),
                          ("rl=3", "rl is a table"), ("episodes", "key=value"),
                          ("rl.loss.prioritized=maybe", "not a boolean")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse(text)


def test_a_toml_file_flags_and_overrides_give_the_same_spec(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('pretrained = "mini-n3"\nseeds = [0, 1]\n[rl]\nepisodes = 64\n'
                    'iterations = 10\n[rl.loss]\nkl_kind = "exact"\n[grid]\nbeta = [0, 150]\n'
                    'kl_coef = [0.5]\n')
    flags = _spec_of_command(["mini-n3", "--run-dir", "x", "--seeds", "0,1", "--episodes", "64",
                              "--iterations", "10", "--kl-kind", "exact", "--beta", "0,150",
                              "--kl-coef", "0.5"])
    from_file = _spec_of_command(["--config", str(path), "--run-dir", "x"])
    overridden = _spec_of_command(["--config", str(path), "--run-dir", "x", "--episodes", "8",
                                   "rl.iterations=10", "rl.episodes=64"])
    assert flags == from_file == overridden
    # An override comes after the flags; the model may be left to the file.
    assert _spec_of_command(["--config", str(path), "--run-dir", "x",
                             "rl.episodes=32"]).rl.episodes == 32


@pytest.mark.parametrize("text, suffix, message", [
    ("episodes = ", ".toml", "not valid TOML"), ("{", ".json", "not valid JSON"),
    ("x", ".yaml", "a config file is .toml or .json"), ("[1]", ".json", "expected a table")])
def test_a_bad_config_file_is_one_line(tmp_path, text, suffix, message):
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        config_files.read(path)


def test_every_flag_of_sweep_is_described():
    from critkl import cli

    parser = cli.build_parser()
    sweep = parser._subparsers._group_actions[0].choices["sweep"]
    undescribed = [action.dest for action in sweep._actions
                   if action.dest != "help" and not (action.help or "").strip()]
    assert undescribed == []
    flags = {action.dest: action for action in sweep._actions}
    assert set(flags["kl_kind"].choices) == {"k1", "k2", "k3", "exact"}
    assert "(default k2)" in flags["kl_kind"].help
    assert all(name in flags for name in HYPER_NAMES)


def test_version(capsys):
    from critkl import cli

    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("critkl ")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from critkl.runs import pretraining
    from tests.test_pretrain import TINY as PRETRAIN

    root = tmp_path_factory.mktemp("spec")
    pretraining.pretrain(dataclasses.replace(PRETRAIN, steps=3), root / "model",
                         print_fn=lambda line: None)
    return root / "model"


TINY_FLAGS = ["--seeds", "0,1", "--beta", "0,150", "--iterations", "2", "--eval-every", "1",
              "--episodes", "4", "--minibatches", "2", "--eval-episodes", "4",
              "--value-hidden-sizes", "16,16"]


def test_a_saved_config_given_back_reproduces_the_run_and_resume_reads_it(tmp_path, tiny_model,
                                                                          capsys):
    """`--config RUN/config.json` in another directory gives the same results bit for bit;
    `--resume` needs no flag repeated and refuses a changed setting, naming it."""
    from critkl import cli

    first, again = tmp_path / "first", tmp_path / "again"
    assert cli.main(["sweep", str(tiny_model), "--run-dir", str(first), *TINY_FLAGS]) == 0
    assert cli.main(["sweep", "--config", str(first / "config.json"),
                     "--run-dir", str(again)]) == 0
    runs = [json.loads((folder / "results.json").read_text())["runs"] for folder in (first, again)]
    assert [run["curve"] for run in runs[0]] == [run["curve"] for run in runs[1]]
    assert json.loads((again / "config.json").read_text()) == json.loads(
        (first / "config.json").read_text())
    _assert_hparams_and_histograms(first / "tensorboard")
    capsys.readouterr()
    assert cli.main(["sweep", "--run-dir", str(first), "--resume"]) == 0
    assert cli.main(["sweep", "--run-dir", str(first), "--resume", "rl.eval_episodes=8"]) == 2
    error = capsys.readouterr().err
    assert "rl.eval_episodes: 4 in the run, 8 now" in error
    assert len(error.strip().splitlines()) == 1


def _assert_hparams_and_histograms(log_dir):
    """Every run declares its hyperparameters; the histograms of certainty and KL weights
    count every action token of each iteration (the `train/generated_tokens` scalar)."""
    from critkl.infra.tracking import read_hparams, read_histograms, read_scalars

    for beta in (0, 150):
        for seed in (0, 1):
            run = log_dir / f"beta={beta},seed={seed}"
            declared = read_hparams(run)
            assert declared["beta"] == beta and declared["seed"] == seed
            assert declared["kl_coef"] == RLHyper().loss.kl_coef and declared["task"] == "addition"
            tokens = dict(read_scalars(run)["train/generated_tokens"])
            histograms = read_histograms(run)
            for name in ("hist/certainty", "hist/kl_weight"):
                assert [step for step, _ in histograms[name]] == [1, 2]
                for step, counts in histograms[name]:
                    assert sum(counts) == pytest.approx(tokens[step])
            if beta == 0:  # the standard KL: every weight 1, in the last bin
                assert all(counts[-1] == sum(counts) for _, counts in histograms["hist/kl_weight"])


def test_overrides_may_follow_the_flags_and_other_extras_are_refused(capsys):
    from critkl import cli

    parser = cli.build_parser()
    args, extra = parser.parse_known_args(["sweep", "mini-n3", "--run-dir", "x", "rl.episodes=64"])
    assert extra == ["rl.episodes=64"]
    with pytest.raises(SystemExit):  # an unknown flag is still an error, exit status 2
        cli.main(["sweep", "mini-n3", "--run-dir", "x", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "mini-n3", "rl.episodes=64"])
    assert "unrecognized arguments: rl.episodes=64" in capsys.readouterr().err


def test_a_sweep_made_before_a_hyperparameter_existed_still_plots(tmp_path):
    """Old results.json lack newer hyperparameters (focus_share, ...): their defaults."""
    from critkl.runs import finetuning

    old = {"learning_rate": 3e-5, "loss": {"kl_coef": 0.5, "beta": 0.0}}
    new = {"learning_rate": 3e-5, "loss": {"kl_coef": 0.5, "beta": 150.0, "focus_share": 0.2}}
    assert finetuning.swept_values([{"hyper": old}, {"hyper": new}]) == [{"beta": 0.0},
                                                                        {"beta": 150.0}]
