import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from critkl import cli
from critkl.tasks.addition import oracle

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "critkl.cli", *args], capture_output=True, text=True)


def test_render_prints_the_episode(capsys):
    assert cli.main(["render", "128", "367"]) == 0
    assert capsys.readouterr().out == oracle.episode_text(128, 367)


def test_render_of_long_operands(capsys):
    a, b = "9" * 20, "1"
    assert cli.main(["render", a, b]) == 0
    assert capsys.readouterr().out == oracle.episode_text(int(a), int(b))


@pytest.mark.parametrize(
    "a, b, message",
    [("12x", "3", "digits 0-9"), ("-5", "3", "non-negative"), ("007", "3", "leading zero"),
     ("1" * 21, "3", "at most 20"), ("1.5", "2", "digits 0-9")],
)
def test_bad_operands_give_one_line_and_status_2(a, b, message):
    result = run("render", a, b)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.slow  # 30-60 s; the default suite stays under 10 minutes on 2 cores
def test_pretrain_then_sweep_end_to_end(tmp_path, capsys):
    pre_dir, sweep_dir = tmp_path / "pre", tmp_path / "sweep"
    assert cli.main(["pretrain", "--run-dir", str(pre_dir), "--model", "tiny", "--max-digits", "1",
                     "--eval-extra-digits", "2", "--batch-size", "8", "--steps", "2",
                     "--warmup-steps", "1", "--eval-problems", "4"]) == 0
    assert cli.main(["sweep", str(pre_dir), "--run-dir", str(sweep_dir), "--seeds", "0,1",
                     "--beta", "0,150", "--iterations", "1", "--eval-every", "1",
                     "--episodes", "4", "--minibatches", "2", "--eval-episodes", "4"]) == 0
    results = json.loads((sweep_dir / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert "beta=150" in capsys.readouterr().out
    assert results["command"].startswith(f"critkl sweep {pre_dir} --run-dir {sweep_dir}")
    # Resuming with another setting is refused, naming it; the same settings resume.
    same = ["sweep", str(pre_dir), "--run-dir", str(sweep_dir), "--seeds", "0,1",
            "--beta", "0,150", "--iterations", "1", "--eval-every", "1",
            "--episodes", "4", "--minibatches", "2", "--eval-episodes", "4", "--resume"]
    assert cli.main([*same[:-1], "--kl-coef", "50", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "grid.kl_coef" in error and "other settings" in error
    assert cli.main(same) == 0
    assert cli.main(["plot", str(sweep_dir), "--out", str(tmp_path / "plots")]) == 0
    written = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"summary.md", "differences.md", "sampled_success.png", "pass_at_1.png"} <= written
    assert cli.main(["plot", str(tmp_path)]) == cli.USAGE_ERROR


@pytest.mark.parametrize(
    "flags, message",
    [(["--kl-kind", "k9"], "choose from 'k1', 'k2'"), (["--episodes", "7", "--minibatches", "5"], "episodes"),
     (["--seeds", "0,1"], "sweep"), (["--gamma", "1.5"], "gamma=1.5 is outside"),
     (["--learning-rate", "nan"], "learning_rate=nan")],
)
def test_bad_finetune_flags_give_a_clear_error(flags, message):
    result = run("finetune", "mini-n3", "--run-dir", "unused", *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_loss_flags_parse_lists_and_strict_booleans():
    import argparse
    from critkl.commands import finetuning
    parser = argparse.ArgumentParser()
    finetuning.add_flags(parser, lists=False)
    args = parser.parse_args(["m", "--run-dir", "x", "--value-hidden-sizes", "64,32",
                              "--prioritized", "No", "--center-advantages", "1"])
    assert args.value_hidden_sizes == (64, 32)
    assert args.prioritized is False and args.center_advantages is True


@pytest.mark.parametrize("name, message", [("mini-n3", "exists already"), ("", "model name"),
                                           ("../../x", "model name"), ("..", "model name")])
def test_export_refuses_to_overwrite_or_escape(tmp_path, capsys, name, message):
    from critkl.runs import models

    shipped = (models.SHIPPED_DIR / "mini-n3" / "params.msgpack").read_bytes()
    assert cli.main(["export", str(tmp_path / "no-run"), name]) == cli.USAGE_ERROR
    assert message in capsys.readouterr().err
    assert (models.SHIPPED_DIR / "mini-n3" / "params.msgpack").read_bytes() == shipped
    assert not (models.SHIPPED_DIR.parent.parent / "x").exists()


@pytest.mark.slow  # 17 s; the default suite stays under 10 minutes on 2 cores
def test_export_then_load(tmp_path, monkeypatch):
    from critkl.runs import models

    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "shipped")
    run_dir = tmp_path / "pre"
    assert cli.main(["pretrain", "--run-dir", str(run_dir), "--model", "tiny", "--max-digits", "1",
                     "--eval-extra-digits", "1", "--batch-size", "8", "--steps", "2",
                     "--warmup-steps", "1", "--eval-problems", "4"]) == 0
    assert cli.main(["export", str(run_dir), "toy"]) == 0
    config, params = models.load_pretrained("toy")
    _, from_run = models.load_run(run_dir)
    assert config.max_digits == 1
    assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(from_run)))
    assert cli.main(["export", str(run_dir), "toy"]) == cli.USAGE_ERROR
    assert cli.main(["export", str(run_dir), "toy", "--replace"]) == 0
    assert [p.name for p in (tmp_path / "shipped").iterdir()] == ["toy"]  # no staging left


TINY_PRETRAIN = ["--model", "tiny", "--max-digits", "1", "--eval-extra-digits", "1",
                 "--steps", "2", "--warmup-steps", "1"]


@pytest.mark.parametrize("case, message", [
    ("run dir is a file", "a file is in the way of a folder"),
    ("config.json not UTF-8", "not valid UTF-8"),
    ("analyze output is a file", "a file is in the way of a folder"),
    ("launched program missing", "No such file or directory ('no-such-program-x')"),
])
def test_io_errors_give_one_message_and_status_2(tmp_path, case, message):
    """The commands' one I/O boundary: a path that cannot be used is one line, no traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes(b"\xff\xfe{")
    argv = {
        "run dir is a file": ["pretrain", *TINY_PRETRAIN, "--run-dir", str(a_file)],
        "config.json not UTF-8": ["pretrain", "--run-dir", str(damaged), "--resume"],
        "analyze output is a file": ["analyze", "mini-n3", "--episodes", "1", "--out", str(a_file)],
        "launched program missing": ["launch", "--processes", "1", "--", "no-such-program-x"],
    }[case]
    result = run(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_every_option_names_its_default():
    """`critkl COMMAND --help` gives every option that takes a value its default."""
    import argparse

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            takes_value = action.option_strings and action.nargs != 0
            if takes_value and action.required is False and "default" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_an_absent_platform_gives_one_line_and_status_2(platform):
    """JAX_PLATFORMS naming an accelerator this machine lacks: one line, not JAX's traceback."""
    result = subprocess.run([sys.executable, "-m", "critkl.cli", "eval", "mini-n3"],
                            capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": platform})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"JAX_PLATFORMS='{platform}'" in lines[0], result.stderr


def assert_one_line_error(code, capsys, *fragments):
    """A command run in this process (`cli.main`) exited with status 2 and wrote one line to
    stderr holding every fragment."""
    error = capsys.readouterr().err
    assert code == 2, error
    assert len(error.strip().splitlines()) == 1, error
    for fragment in fragments:
        assert fragment in error, error


def test_an_empty_run_dir_is_refused():
    for command in (["pretrain", "--run-dir", ""], ["sweep", "mini-n3", "--run-dir", " "]):
        with pytest.raises(SystemExit) as stop:
            cli.build_parser().parse_args(command)
        assert stop.value.code == 2


def test_a_directory_named_like_a_shipped_model_is_not_taken_for_it(tmp_path, monkeypatch,
                                                                      capsys):
    """A bare name that is both a shipped model and a local directory is refused in one line;
    "./NAME" is the directory (here an empty one: not a run)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mini-n3").mkdir()
    assert_one_line_error(cli.main(["eval", "mini-n3", "--problems", "1"]), capsys,
                          "both a shipped model and a directory here")
    assert cli.main(["eval", "./mini-n3", "--problems", "1"]) == 2
    assert "shipped" not in capsys.readouterr().err


def test_snapshot_refuses_a_run_without_checkpoint_and_an_existing_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli.main(["snapshot", str(tmp_path / "empty"), str(tmp_path / "kept")]),
                          capsys, "holds no checkpoint to snapshot")
    assert not (tmp_path / "kept").exists()
    assert_one_line_error(cli.main(["snapshot", str(tmp_path / "empty"), str(tmp_path / "empty")]),
                          capsys, "exists: a snapshot goes into a new folder")


def test_written_files_are_readable_like_any_new_file(tmp_path):
    import os

    from critkl.infra import files

    umask = os.umask(0o022)
    try:
        path = files.write_atomic(tmp_path / "results.json", "{}")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._UMASK


@pytest.mark.slow
def test_eval_out_writes_only_that_file(tmp_path):
    out = tmp_path / "report" / "F.json"
    assert cli.main(["eval", "mini-n3", "--problems", "1", "--rl-episodes", "1",
                     "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["F.json"]


def test_eval_refuses_an_unusable_out_before_evaluating(tmp_path, monkeypatch, capsys):
    from critkl import evaluation

    def evaluated(*args, **kwargs):
        raise AssertionError("evaluated before --out was checked")

    monkeypatch.setattr(evaluation, "accuracy_table", evaluated)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert cli.main(["eval", "mini-n3", "--out", str(a_file / "F.json")]) == 2
    error = capsys.readouterr().err
    assert str(a_file) in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("edit, message", [
    ("key of wrong type", "rows[0].key is"),
    ("no critical row", "names no causally critical decision"),
    ("another n", "was made for a model pre-trained up to level 5, not 3"),
    ("line 99", "never occurs in addition episodes of 4+4 digits"),
    ("another task", "was made for task 'path-star', not 'addition'"),
])
def test_a_causal_map_is_checked_against_the_run(tmp_path, capsys, edit, message):
    """The shipped map of mini-n3, edited: refused in one line naming the file, before any
    training (before: tracebacks, or a sweep reporting p(right) 0.0 at keys never seen)."""
    record = json.loads((ROOT / "results" / "critical-mini-n3" / "critical.json").read_text())
    critical = [row for row in record["rows"] if row.get("critical")]
    if edit == "key of wrong type":
        record["rows"][0]["key"] = "line 1"
    elif edit == "no critical row":
        for row in critical:
            row["critical"] = False
    elif edit == "another n":
        record["n"] = 5
    elif edit == "another task":
        record["task"] = "path-star"
    else:
        critical[0]["key"][0] = 99
    path = tmp_path / "critical.json"
    path.write_text(json.dumps(record))
    code = cli.main(["sweep", "mini-n3", "--run-dir", str(tmp_path / "run"),
                     "--causal-map", str(path), "--iterations", "1", "--eval-every", "1"])
    assert_one_line_error(code, capsys, message, str(path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case, message", [
    ("no runs", "'runs' is missing or empty"),
    ("string values", "runs[1].curve['eval/pass_at_1'] is not a list of numbers"),
    ("ragged curves", "runs[1].curve has other metrics or lengths"),
    ("n as a string", "rl.n and rl.extra_digits must be integers"),
])
def test_plot_of_a_damaged_results_json_is_one_line(tmp_path, capsys, case, message):
    runs = [{"name": f"seed={s}", "setting": "", "seed": s,
             "curve": {"iteration": [0, 5], "eval/pass_at_1": [0.2, 0.4]}} for s in (0, 1)]
    config = {"rl": {"n": 3, "extra_digits": 1}}
    if case == "no runs":
        runs = []
    elif case == "string values":
        runs[1]["curve"]["eval/pass_at_1"] = ["0.2", "0.4"]
    elif case == "ragged curves":
        runs[1]["curve"]["eval/pass_at_1"] = [0.2]
    else:
        config["rl"]["n"] = "3"
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(cli.main(["plot", str(tmp_path)]), capsys, message)
