"""Every flag of the training, map and evaluation commands, given values it must refuse: exit status 2, an
error line that names the flag, no traceback. The table of cases is generated from the
config dataclasses and the hyperparameter ranges, so a new field is fuzzed too."""

import dataclasses
import json
import math
import os
import shutil
import socket

import pytest

from critkl import cli
from critkl.commands import finetuning
from critkl.config import HYPER_NAMES, HYPER_RANGES, CausalMapConfig, PretrainConfig, RLConfig
from critkl.loss_config import LossConfig

# Invalid whatever the field: not a number of the field's type.
BAD_BY_TYPE = {int: ["abc", "1.5", "-1"], float: ["abc", "nan", "inf", "1e39"], bool: ["maybe"],
               str: ["no-such-choice"]}
# Free-text fields (a path): given one that does not exist.
FREE_TEXT = {"init_from"}


def _field_cases(config_class, skip=()):
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        kind = type(getattr(defaults, field.name))
        if kind is tuple:
            values = ["0", "a,b", "64,-4"]
        else:
            values = ["no/such/run"] if field.name in FREE_TEXT else BAD_BY_TYPE[kind]
        for value in values:
            yield field.name, value


def _hyper_cases():
    for name in HYPER_NAMES:
        low, high, low_in, high_in = HYPER_RANGES[name]
        values = ["abc", "nan", "inf", "1e39"]  # 1e39: infinite in float32
        if math.isfinite(low):
            values.append(str(low - 1.0) if low_in else str(low))
        if math.isfinite(high):
            values.append(str(high + 1.0) if high_in else str(high))
        for value in values:
            yield name, value


def _flag(name):
    return "--" + name.replace("_", "-")


# A run that is not refused must end in seconds (and then fail the test), so every command
# gets a tiny budget; the fuzzed flag comes last and overrides it.
PRETRAIN = ["--run-dir", "{tmp}/run", "--model", "tiny", "--max-digits", "1", "--steps", "2",
            "--warmup-steps", "0", "--log-every", "1", "--eval-every", "2", "--checkpoint-every",
            "2", "--eval-problems", "2", "--batch-size", "8"]
FINETUNE = ["mini-n3", "--run-dir", "{tmp}/rl", "--episodes", "2", "--minibatches", "1",
            "--iterations", "1", "--eval-every", "1", "--eval-episodes", "2"]

CASES = (
    [("pretrain", PRETRAIN + [_flag(name), value], name)
     for name, value in _field_cases(PretrainConfig)]
    + [("pretrain", PRETRAIN + ["--batch-size", "3"], "batch_size")]  # 8 devices in tests
    + [("finetune", FINETUNE + [_flag(name), value], name)
       for name, value in _field_cases(RLConfig, skip=finetuning.RL_FIELDS_WITHOUT_FLAGS)]
    + [("finetune", FINETUNE + [_flag(name), value], name)
       for name, value in _field_cases(LossConfig)]
    + [("sweep", FINETUNE + [_flag(name), value], name)
       for name, value in _hyper_cases()]
    + [("sweep", FINETUNE + ["--seeds", value], "seeds")
       for value in ("0,0", "a", "-1", "2147483648", "1" * 20)]
    + [("critical", ["mini-n3", "--out", "{tmp}/map", "--problems", "1", "--batch", "8",
                   _flag(name), value], name)
       for name, value in _field_cases(CausalMapConfig)]
    + [("eval", ["mini-n3", "--out", "{tmp}/eval.json", "--problems", "2", "--batch", "2",
                "--rl-episodes", "2", flag, value], flag[2:])
       for flag in ("--problems", "--batch", "--rl-episodes") for value in ("0", "-3", "x")]
    + [("eval", ["mini-n3", "--out", "{tmp}/eval.json", "--seed", value], "seed")
       for value in ("-1", "2147483648", "1" * 20)]
    # Too large for any machine: refused before anything is allocated (memory_budget).
    + [("finetune", FINETUNE + ["--episodes", "1000000000"], "episodes"),
       ("sweep", FINETUNE + ["--seeds", ",".join(map(str, range(10_000)))], "seeds"),
       ("critical", ["mini-n3", "--out", "{tmp}/map", "--problems", "1000000000"], "problems")]
    # Beyond int32 indices, or memory no machine has, flag by flag (memory_budget).
    + [("pretrain", PRETRAIN + [flag, value], field) for flag, value, field in (
        ("--batch-size", "1000000000", "batch_size"), ("--batch-size", "2000000", "batch_size"),
        ("--eval-problems", "100000000", "eval_problems"),
        ("--eval-problems", "8000000", "eval_problems"))]
    + [("finetune", FINETUNE + [flag, value], field) for flag, value, field in (
        ("--eval-episodes", "1000000000", "eval_episodes"),
        ("--eval-episodes", "4000000", "eval_episodes"),
        ("--value-hidden-sizes", "100000000", "value_hidden_sizes"))]
    + [("critical", ["mini-n3", "--out", "{tmp}/map", "--batch", value], "batch")
       for value in ("1000000000", "3000000")]
    + [("eval", ["mini-n3", "--out", "{tmp}/eval.json", *flags], field) for flags, field in (
        (["--problems", "100000000", "--batch", "100000000"], "batch"),
        (["--problems", "3000000", "--batch", "3000000"], "batch"),
        (["--problems", "3000000000"], "problems"), (["--batch", "3000000000"], "batch"),
        (["--rl-episodes", "5000000000"], "rl-episodes"))]
    # More optimizer steps than a run can count.
    + [("pretrain", PRETRAIN + ["--steps", "10000000000000000000"], "steps"),
       ("finetune", FINETUNE + ["--iterations", "2147483648"], "iterations")]
)


@pytest.mark.parametrize("command, argv, field", CASES,
                         ids=[f"{c}-{f}={a[-1][:20]!r}" for c, a, f in CASES])
def test_invalid_values_are_refused_naming_the_field(tmp_path, capsys, command, argv, field):
    argv = [command] + [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse: a value of the wrong type
        status = exit.code
    error = capsys.readouterr().err
    assert status == 2, f"{argv} exited {status}: {error[-500:]}"
    assert "Traceback" not in error
    last = error.strip().splitlines()[-1]
    names = {field, field.replace("_", "-"), field.replace("-", "_")}
    assert "error" in last and any(name in last for name in names), last


# A pre-training run's files edited by hand or damaged, or the run in use: (what is done to
# the run directory, what the one error line must name). Each is given to `eval` and to
# `pretrain --resume` (only training takes the lock).
def _edit_config(**fields):
    def edit(run_dir):
        path = run_dir / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return edit


def _replace_config(text):
    return lambda run_dir: (run_dir / "config.json").write_text(text)


def _lock_by_a_live_process(run_dir):
    (run_dir / "run.lock").write_text(json.dumps({"pid": os.getppid(),
                                                  "host": socket.gethostname()}))


RUN_DIR_CASES = {
    "unknown-preset": (_edit_config(model="huge"), "model"),
    "digits-as-text": (_edit_config(max_digits="3"), "max_digits"),
    "too-many-digits": (_edit_config(max_digits=1000), "max_digits"),
    "unknown-field": (_edit_config(colour="blue"), "colour"),
    "negative-batch": (_edit_config(batch_size=-8), "batch_size"),
    "not-an-object": (_replace_config("[1, 2]"), "config.json"),
    "not-json": (_replace_config("{model: tiny"), "config.json"),
    "no-digest": (lambda run_dir: (run_dir / "checksums" / "3.sha256").unlink(),
                  "--allow-undigested"),
    "in-use": (_lock_by_a_live_process, f"in use by process {os.getppid()}"),
}
RUN_DIR_COMMANDS = [(command, case) for command in ("eval", "pretrain") for case in RUN_DIR_CASES
                    if (command, case) != ("eval", "in-use")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from critkl.runs import pretraining
    from tests.test_pretrain import TINY

    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    pretraining.pretrain(dataclasses.replace(TINY, steps=3), run_dir, print_fn=lambda line: None)
    return run_dir


@pytest.mark.parametrize("command, case", RUN_DIR_COMMANDS,
                         ids=[f"{command}-{case}" for command, case in RUN_DIR_COMMANDS])
def test_damaged_or_busy_run_directories_are_refused_in_one_line(
        tmp_path, capsys, monkeypatch, tiny_run, command, case):
    from critkl.infra import checkpoint

    monkeypatch.setattr(checkpoint, "_undigested_allowed", False)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    damage, named = RUN_DIR_CASES[case]
    damage(run_dir)
    argv = (["eval", str(run_dir), "--problems", "2", "--batch", "2", "--rl-episodes", "2"]
            if command == "eval" else ["pretrain", "--run-dir", str(run_dir), "--resume"])
    status = cli.main(argv)
    error = capsys.readouterr().err
    assert status == 2, f"{argv} exited {status}: {error[-500:]}"
    assert len(error.strip().splitlines()) == 1 and named in error, error
