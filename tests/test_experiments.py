"""Smoke tests of every experiment entry at tiny scale. The entries share one work folder,
so the tiny model is pre-trained once. The entries, the main job's included (two minutes
here), are slow (`pytest -m slow`); each stage of the main job is checked in the default
suite on its own (tests/test_analysis.py, test_causal.py, test_finetune.py, and the
commands end to end in test_cli.py)."""

import json

import numpy as np

import pytest

import experiments
from critkl import cli
from critkl.tasks.addition import Addition

# Written by every RL sweep entry: the causal map and the plots of its metrics.
RL_FILES = ("critical.json", "critical.md", "critical.png", "sampled_success.png",
            "comfort_zone.png", "kl_routine.png", "kl_critical_like.png")
EXPECTED_FILES = {
    "main": {"run.json", "main.md", "main.json", "accuracy.png", "accuracy_n1.md", "table1.md",
             "certainty.json", "episodes.html", "certainty_n1.png", "summary.md",
             "summary.json", "pass_at_1.png", "critical_commas.png", "critical_digits.png",
             *RL_FILES},
    "certainty": {"table1.md", "certainty.json", "episodes.html", "certainty_n1.png"},
    "accuracy": {"accuracy.json", "accuracy.png", "accuracy_n1.md"},
    "levels": {"levels.json", "levels.png"},
    "critical": {"summary.md", "summary.json", "pass_at_1.png", "critical_commas.png",
                 "critical_digits.png", *RL_FILES},
    "mechanism": {"mechanism.md", "mechanism.json", "pass_at_1.png", *RL_FILES},
    "beta": {"summary.md", "summary.json", "pass_at_1.png", "critical_commas.png",
             "critical_digits.png", *RL_FILES},
    "detectors": {"detectors.md", "detectors.json", "detectors.png", "critical.json",
                  "detectors_tokens.npz", "detectors_constructed.md",
                  "critical_constructed.json"},
    "weightings": {"summary.md", "differences.md", "summary.json", "pass_at_1.png", *RL_FILES},
    "frontier": {"frontier.md", "frontier.json", "frontier.png", "frontier_likelihood.png",
                 "critical.json"},
    "iso-learning": {"iso_learning.md", "iso_learning.json", "iso_learning.png",
                     "iso_razor.png"},
    "paper-setting": {"accuracy.png", "accuracy_n1.md", "table1.md", "certainty.json",
                      "critical.json", "rl.md", "rl.json", "sampled_success.png",
                      "pass_at_1.png", "comfort_zone.png"},
}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def _check_outputs(folder, name):
    names = {p.name for p in folder.iterdir()}
    assert EXPECTED_FILES[name] <= names, EXPECTED_FILES[name] - names
    assert any((folder / "tensorboard").iterdir())
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tensorboard_tags(folder) -> dict[str, set]:
    """Scalar, image and text tags of every event file under `folder`, read with
    TensorBoard's own reader (what `tensorboard --logdir folder` serves)."""
    from tensorboard.backend.event_processing import event_accumulator

    tags = {"scalars": set(), "images": set(), "text": set()}
    for directory in {path.parent for path in folder.rglob("events.out.tfevents.*")}:
        reader = event_accumulator.EventAccumulator(str(directory), size_guidance={
            event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
            event_accumulator.TENSORS: 0})
        reader.Reload()
        found = reader.Tags()
        tags["scalars"] |= set(found["scalars"])
        tags["images"] |= set(found["images"])
        tags["text"] |= {tag for tag in found["tensors"]
                         if reader.SummaryMetadata(tag).plugin_data.plugin_name == "text"}
    return tags


def test_every_entry_has_a_smoke_test():
    assert set(EXPECTED_FILES) == set(experiments.EXPERIMENTS)


def test_experiment_help_names_every_entry(capsys):
    with pytest.raises(SystemExit):
        cli.main(["experiment", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(name in shown for name in experiments.EXPERIMENTS)


@pytest.mark.slow
def test_main_job_tiny(work_dir, capsys):
    assert cli.main(["experiment", "tiny", "--out", str(work_dir)]) == 0
    out = capsys.readouterr().out
    folder = work_dir / "main-tiny"
    _check_outputs(folder, "main")
    summary = json.loads((folder / "main.json").read_text())
    assert set(summary["rl_summary"]) == {"beta=0", "beta=150"}
    assert summary["certainty"]["structural"]["critical"]["count"] == 8
    assert "## Certainty at critical tokens" in out and "| prioritized KL (β 150) | 2 |" in out
    assert "## Causal critical-token map" in out
    assert "beta=150: sampled success" in out.split("## Verdict")[1]
    tags = _tensorboard_tags(folder)  # what the job's closing `tensorboard --logdir` serves
    assert {"eval/sampled_success", "loss/kl", "critical/p_right_comma"} <= tags["scalars"], tags
    assert {"sampled_success", "accuracy", "certainty_n1"} <= tags["images"], tags
    assert {"main/text_summary", "table1/text_summary"} <= tags["text"], tags


@pytest.mark.slow
@pytest.mark.parametrize("task", ["path-star", "multiplication"])
def test_detectors_tiny_on_another_task(work_dir, task):
    """The detectors entry on another task: its model, its map and its RL level, no
    constructed fork (addition's)."""
    from critkl.analysis import causal
    from critkl.tasks import registry
    folder = experiments.run("detectors", "tiny", work_dir, print_fn=lambda line: None, task=task)
    record = json.loads((folder / "detectors.json").read_text())
    assert (record["task"], record["level"]) == (task, registry.make(task, 1).rl_level)
    causal_map = json.loads((folder / "critical.json").read_text())
    assert causal_map["level"] == record["level"]
    # A map with no causally critical decision is scored against its costly ones, named so.
    rows = causal_map["rows"]
    critical = [row["key"] for row in rows if row.get("critical")]
    assert (record["target"], record["keys"]) == (
        ("causally critical", critical) if critical else
        ("costly", [row["key"] for row in rows if causal.costly(row)]))
    assert not (folder / "detectors_constructed.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["path-star", "multiplication"])
def test_main_job_tiny_on_another_task(work_dir, capsys, task):
    """The main job on another task: its own model (pre-trained by the task's recipe), folder
    and summary; RL runs on the model's task."""
    assert cli.main(["experiment", "tiny", "--task", task, "--out", str(work_dir)]) == 0
    folder = work_dir / f"main-{task}-tiny"
    addition_only = {"critical_commas.png", "critical_digits.png"}  # addition's list metrics
    assert EXPECTED_FILES["main"] - addition_only <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "main.json").read_text())
    assert summary["task"] == task and summary["accuracy"]["task"] == task
    assert set(summary["rl_summary"]) == {"beta=0", "beta=150"}
    rl_config = json.loads((folder / "rl" / "config.json").read_text())
    assert rl_config["rl"]["task"] == task
    assert (work_dir / "models" / f"{task}-tiny-n1").is_dir()
    assert f"task {task}: summary" in capsys.readouterr().out


def test_other_tasks_mini_recipes_chain_their_stages(tmp_path):
    """Path-star: each stage warm-starts from the one before, the last three reach n = 5
    edges; another n has no recipe (its first stages are fixed at 4 edges) and is refused by
    name. Multiplication: a second stage from the first, with N+1 problems."""
    from experiments import models
    dirs = [tmp_path / f"stage{i + 1}" for i in range(models.MAX_STAGES)]
    stages = models.recipe("mini", 5, dirs, "path-star")
    assert [s.init_from for s in stages] == [""] + [str(d) for d in dirs[:4]]
    assert [s.max_digits for s in stages] == [4, 4, 5, 5, 5]
    assert [s.attention_scope for s in stages] == ["stream", "episode", "episode", "alone", "alone"]
    with pytest.raises(ValueError, match="n=5 only, not n=4"):
        models.recipe("mini", 4, dirs, "path-star")
    first, second = models.recipe("mini", 3, dirs, "multiplication")  # stage 2 sees N+1
    assert (second.init_from, first.longer_share, second.longer_share) == (str(dirs[0]), 0, 0.02)


def test_mini_scale_reuses_the_map_shipped_with_its_model(tmp_path, capsys):
    """mini-n3 ships its causal map; the experiments take it instead of re-measuring it
    (no parameters given here: measuring would fail)."""
    from critkl.analysis import causal
    from critkl.infra.outputs import Output
    from critkl.runs.models import load_pretrained, shipped_causal_map
    from experiments import kl_comparison

    output = Output(tmp_path / "out")
    try:
        pre_config, _ = load_pretrained("mini-n3")
        keys = kl_comparison.causal_keys("mini", None, pre_config, output, print)
    finally:
        output.close()
    assert keys == causal.critical_keys(shipped_causal_map("mini-n3")["rows"]) and len(keys) == 7
    assert "shipped with mini-n3" in capsys.readouterr().out
    assert causal.read_critical_keys(tmp_path / "out" / "critical.json", Addition(1)) == keys
    assert (tmp_path / "out" / "critical.png").exists()


def test_shipped_causal_map_is_the_committed_result():
    """The package's copy of mini-n3's map is results/critical-mini-n3's, which README cites."""
    from pathlib import Path

    from critkl.runs.models import shipped_causal_map

    committed = Path(__file__).parent.parent / "results" / "critical-mini-n3" / "critical.json"
    assert shipped_causal_map("mini-n3") == json.loads(committed.read_text())


def test_shipped_causal_map_of_mini_n7_is_the_paper_setting_result():
    """mini-n7's map is results/paper-setting-mini's (the experiment's first stage), with the
    command and commit that made it; its settings are the mini scale's, so the experiments use
    it instead of measuring it again."""
    from pathlib import Path

    import dataclasses

    from critkl.config import CausalMapConfig
    from critkl.runs.models import shipped_causal_map
    from experiments import kl_comparison

    committed = json.loads((Path(__file__).parent.parent / "results" / "paper-setting-mini"
                            / "critical.json").read_text())
    shipped = shipped_causal_map("mini-n7")
    assert {k: v for k, v in shipped.items() if k not in ("command", "commit", "model")} == committed
    assert shipped["settings"] == dataclasses.asdict(
        CausalMapConfig(problems=kl_comparison.CAUSAL_PROBLEMS["mini"]))


@pytest.mark.slow
def test_shipped_causal_map_is_what_its_command_measures():
    """The shipped map of mini-n3 re-measured with its own settings (6 minutes here)."""
    from critkl.analysis import causal
    from critkl.config import CausalMapConfig
    from critkl.runs.models import load_pretrained, shipped_causal_map

    shipped = shipped_causal_map("mini-n3")
    pre_config, params = load_pretrained("mini-n3")
    rows = causal.causal_map(params, pre_config.model_config, Addition(shipped["n"]),
                             CausalMapConfig(**shipped["settings"]))
    assert causal.critical_keys(rows) == causal.critical_keys(shipped["rows"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["certainty", "accuracy", "levels", "critical", "beta",
                                  "mechanism", "detectors", "weightings", "paper-setting",
                                  "iso-learning"])
def test_entry_tiny(work_dir, name):
    folder = experiments.run(name, "tiny", work_dir, print_fn=lambda line: None)
    _check_outputs(folder, name)
    if name == "detectors":  # the committed per-token scores give the table's precisions back
        import numpy as np

        from critkl.analysis import detectors

        saved = np.load(folder / "detectors_tokens.npz")
        ranked = detectors.Ranked({k[len("confidence_"):]: saved[k] for k in saved.files
                                   if k.startswith("confidence_")}, saved["critical"])
        rows = json.loads((folder / "detectors.json").read_text())["rows"]
        assert json.loads(json.dumps(detectors.table(ranked))) == rows
    if name == "paper-setting":  # every arm ran on the same seeds, the paper's settings too
        rl = json.loads((folder / "rl.json").read_text())
        assert list(rl["summary"]) == ["no-kl", "standard", "prioritized-beta150"]
        assert all(row["runs"] == 2 for row in rl["summary"].values())
        assert rl["paper_summary"]["paper-settings"]["runs"] == 1


@pytest.mark.parametrize("argv, message", [
    (["experiment", "nope"], "unknown experiment 'nope'"),
    (["experiment", "beta", "--scale", "huge"], "--scale must be one of tiny, mini, paper"),
    (["experiment", "frontier", "--task", "path-star"],
     "experiment 'frontier' runs on task 'addition' only, not 'path-star' (entries that take "
     "--task: main, detectors)"),
])
def test_experiment_bad_input(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 20 s; the functions it calls are tested in test_analysis.py
def test_analyze_command(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert cli.main(["analyze", "mini-n3", "--episodes", "4", "--shown", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 3 | structural |" in printed and "| 3 | empirical |" in printed
    assert {"table1.md", "certainty.json", "episodes.html", "certainty_n3.png"} <= {
        p.name for p in out.iterdir()}
    tables = json.loads((out / "certainty.json").read_text())
    assert tables[0]["structural"]["critical"]["count"] == 4


def test_analyze_bad_input(capsys):
    assert cli.main(["analyze", "no-such-model"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err


def test_iso_learning_tests_pair_each_arm_with_its_match_and_controls():
    """The primary test and the controls against differences computed by hand."""
    from experiments import iso_learning

    arm_list = iso_learning.arms((0.5,), {1.0: 0.4})
    assert [(a.name, a.kind, a.kl_coef, a.beta) for a in arm_list] == [
        ("no-kl", "no KL", 0.0, 0.0), ("standard-0.5", "standard", 0.5, 0.0),
        ("prioritized-1", "prioritized", 1.0, 150.0), ("uniform-0.4", "uniform", 0.4, 0.0),
        ("shuffled-1", "shuffled", 1.0, 150.0)]
    retention = np.array([[.5, .6, .7, .6, .5], [.9, .9, .8, .9, .9], [.95, .92, .85, .97, .93],
                          [.9, .9, .9, .9, .9], [.8, .85, .8, .9, .8]])
    learning = np.linspace(0.3, 0.7, 25).reshape(5, 5)
    tests = iso_learning.paired_tests(
        {iso_learning.RETENTION: retention, iso_learning.LEARNING: learning}, arm_list,
        {"prioritized-1": "standard-0.5"})
    primary = tests[0]
    assert (primary["family"], primary["arm"], primary["against"]) == (
        "primary", "prioritized-1", "standard-0.5")
    assert primary["mean"] == pytest.approx(np.mean(retention[2] - retention[1]))
    assert primary["p"] == pytest.approx(2 / 32)  # 5 of 5 seeds favour it: the exact minimum
    against = {(row["against"], row["metric"]): row for row in tests[1:]}
    assert against[("shuffled-1", iso_learning.RETENTION)]["mean"] == pytest.approx(
        np.mean(retention[2] - retention[4]))
    assert against[("uniform-0.4", iso_learning.LEARNING)]["mean"] == pytest.approx(
        np.mean(learning[2] - learning[3]))
    table = iso_learning.markdown({iso_learning.RETENTION: retention,
                                   iso_learning.LEARNING: learning}, arm_list, [1, 2, 3, 4, 5],
                                  tests)
    assert "| primary | prioritized-1 | standard-0.5 |" in table
