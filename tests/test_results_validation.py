"""Every results.json read back is validated: `critkl plot`, a resumed sweep and a finished
sweep reused from its results.json refuse non-finite values, rates outside [0, 1], curves of
other lengths and holes in the evaluations, naming the file, the run and the field."""

import dataclasses
import glob
import json
import math
import re
import shutil
from pathlib import Path

import jax
import pytest

from critkl import cli
from critkl.config import RLHyper
from critkl.infra import checkpoint
from critkl.model import init_params
from critkl.runs import finetuning

from tests.test_finetune import TWO_PERIODS
from tests.test_rl import TINY

ROOT = Path(__file__).resolve().parent.parent


def written_results() -> dict:
    """A results.json of two runs evaluated at 0, 2, 4 (a training curve one shorter), as
    a sweep writes it; no critical token in the first evaluation of seed 1."""
    return {"runs": [{"name": f"seed={seed}", "setting": "", "seed": seed, "curve": {
        "iteration": [0, 2, 4],
        "eval/pass_at_1": [0.25, 0.5, 0.75],
        "critical/p_right_comma": [math.nan if seed else 0.5, 0.625, 0.75],
        "loss/kl": [0.01, 0.02],
        "train/success": [0.125, 0.25]}} for seed in (0, 1)]}


def edited(edit) -> dict:
    results = written_results()
    edit(results["runs"][1]["curve"])
    return results


def without_evaluation(curve: dict, step: int) -> None:
    """Remove the evaluation at `step` and the training period it ends."""
    index = curve["iteration"].index(step)
    for key, values in curve.items():
        del values[index - 1 if key in finetuning.CURVE_TRAIN_KEYS else index]


DAMAGED = {
    "NaN": (lambda c: c["eval/pass_at_1"].__setitem__(1, math.nan),
            r"curve\['eval/pass_at_1'\]\[1\] is nan, expected a finite number"),
    "inf": (lambda c: c["loss/kl"].__setitem__(0, math.inf),
            r"curve\['loss/kl'\]\[0\] is inf, expected a finite number"),
    "rate of 7.5": (lambda c: c["eval/pass_at_1"].__setitem__(2, 7.5),
                    r"curve\['eval/pass_at_1'\]\[2\] is 7.5, a rate outside \[0, 1\]"),
    "negative rate": (lambda c: c["train/success"].__setitem__(0, -0.5),
                      r"curve\['train/success'\]\[0\] is -0.5, a rate outside"),
    "hole": (lambda c: c["iteration"].__setitem__(2, 6),
             r"curve\['iteration'\] has no evaluation at 4 \(2 is followed by 6"),
    "descending": (lambda c: c["iteration"].__setitem__(2, 1),
                   r"curve\['iteration'\] is not ascending \(2 is followed by 1\)"),
    "late start": (lambda c: c.__setitem__("iteration", [1, 3, 5]),
                   r"curve\['iteration'\] starts at 1, not at 0"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_results_json_is_refused_naming_the_run_and_field(case):
    edit, message = DAMAGED[case]
    with pytest.raises(ValueError, match=r"^runs\[1\] \(run 'seed=1'\): " + message):
        finetuning.check_results(edited(edit))


def test_curves_of_a_run_are_as_long_as_its_evaluations():
    """A single run (no other run of its setting to compare with): an evaluation curve
    shorter than its iterations, a training curve as long as them."""
    results = written_results()
    del results["runs"][1]
    results["runs"][0]["curve"]["eval/pass_at_1"].pop()
    with pytest.raises(ValueError, match=r"curve\['eval/pass_at_1'\] has 2 points for 3 "
                                         r"evaluations, expected 3"):
        finetuning.check_results(results)
    results = written_results()
    del results["runs"][1]
    results["runs"][0]["curve"]["loss/kl"].append(0.03)
    with pytest.raises(ValueError, match=r"curve\['loss/kl'\] has 3 points .* expected 2"):
        finetuning.check_results(results)


def test_nan_is_kept_only_where_no_token_may_qualify_and_holes_against_eval_every():
    """NaN in critical/ and causal/ curves is an absent metric (`rl.mean_where`): accepted,
    as is every committed results.json at its sweep's eval_every; evaluations at 0, 4, 8 of
    a sweep evaluating every 2 iterations are refused."""
    finetuning.check_results(written_results(), eval_every=2)
    for path in glob.glob(str(ROOT / "results" / "**" / "results.json"), recursive=True):
        config = Path(path).with_name("config.json")
        every = json.loads(config.read_text())["rl"]["eval_every"] if config.exists() else None
        finetuning.check_results(json.loads(Path(path).read_text()), eval_every=every)
    results = written_results()
    for run in results["runs"]:
        run["curve"]["iteration"] = [0, 4, 8]
    with pytest.raises(ValueError, match="no evaluation at 2 .*one every 2 iterations"):
        finetuning.check_results(results, eval_every=2)


@pytest.mark.parametrize("case", ["NaN", "rate of 7.5"])
def test_plot_of_a_nan_or_a_rate_of_7_5_is_one_line_and_no_plot(tmp_path, capsys, case):
    edit, message = DAMAGED[case]
    (tmp_path / "results.json").write_text(json.dumps(edited(edit)))  # NaN as JSON's NaN
    (tmp_path / "config.json").write_text(json.dumps({"rl": {"n": 3, "extra_digits": 1}}))
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("critkl plot: error: "), captured.err
    assert "results.json" in lines[0]
    assert re.search(r"runs\[1\] \(run 'seed=1'\): " + message, lines[0])
    assert captured.out == "" and not (tmp_path / "plots").exists()


def holed_run_dir(run_dir: Path, saved: dict) -> Path:
    """A sweep's run directory (config.json `saved`) whose results.json, evaluated at 0, 2,
    4, lacks the evaluation at 2; its path."""
    checkpoint.save_config(run_dir, saved)
    results = written_results()
    for run in results["runs"]:
        without_evaluation(run["curve"], 2)
    path = run_dir / "results.json"
    path.write_text(json.dumps(results))
    return path


HOLE = "has no evaluation at 2 (0 is followed by 4; one every 2 iterations)"


def test_a_finished_sweep_with_a_hole_is_refused_not_reused(tmp_path):
    saved = {"rl": {"iterations": 4, "eval_every": 2}}
    path = holed_run_dir(tmp_path, saved)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        finetuning.finished_results(tmp_path, saved, 4)
    assert str(path) in str(refused.value) and HOLE in str(refused.value)
    path.write_text(json.dumps(written_results()))
    assert finetuning.finished_results(tmp_path, saved, 4)["summary"]


def test_a_resumed_sweep_refuses_a_hole_and_recomputes_what_follows_its_checkpoint(tmp_path):
    """Read back to resume from the checkpoint of iteration 4: a results.json lacking the
    evaluation at 2, or at 4, is refused naming it; from the checkpoint of iteration 2, a
    NaN pass@1 at 4 is dropped with the rest to recompute."""
    path = holed_run_dir(tmp_path, {"rl": {"iterations": 4, "eval_every": 2}})
    with pytest.raises(checkpoint.CheckpointError) as refused:
        finetuning._results_up_to(tmp_path, 4, 2)
    assert str(path) in str(refused.value) and HOLE in str(refused.value)
    results = written_results()
    for run in results["runs"]:
        without_evaluation(run["curve"], 4)
    path.write_text(json.dumps(results))
    with pytest.raises(checkpoint.CheckpointError, match="has no evaluation at 4, which the "
                                                         "checkpoint of iteration 4 holds"):
        finetuning._results_up_to(tmp_path, 4, 2)
    results = written_results()
    for run in results["runs"]:
        run["curve"]["eval/pass_at_1"][2] = math.nan
    path.write_text(json.dumps(results))
    kept, _ = finetuning._results_up_to(tmp_path, 2, 2)
    assert [run["curve"]["iteration"] for run in kept["runs"]] == [[0, 2], [0, 2]]


@pytest.mark.slow  # 40-90 s alone (compiling the sweep); the two tests above in the default set
def test_a_resumed_or_reused_sweep_never_keeps_a_hole(tmp_path):
    """A 2-run sweep evaluated at 0, 2, 4 with its evaluation at 2 removed from results.json:
    resuming it from the checkpoint of iteration 4, or reusing it as finished, is refused in
    one line naming the hole. With the checkpoint of iteration 4 gone, what follows the
    checkpoint of iteration 2 is recomputed, not refused (here a NaN pass@1 at 4)."""
    params = init_params(jax.random.key(0), TINY)
    runs = finetuning.grid_runs([0, 1], {"kl_coef": [0.5]}, RLHyper())
    saved = {"rl": dataclasses.asdict(TWO_PERIODS)}
    run_dir = tmp_path / "run"
    straight = finetuning.finetune(TWO_PERIODS, runs, params, TINY, run_dir,
                                   saved_config=saved, print_fn=lambda line: None)
    path = run_dir / "results.json"
    written = path.read_text()
    holed = json.loads(written)
    for run in holed["runs"]:
        without_evaluation(run["curve"], 2)
    path.write_text(json.dumps(holed))

    with pytest.raises(checkpoint.CheckpointError) as refused:
        finetuning.finished_results(run_dir, saved, TWO_PERIODS.iterations)
    assert str(path) in str(refused.value) and HOLE in str(refused.value)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        finetuning.finetune(TWO_PERIODS, runs, params, TINY, run_dir, resume=True,
                            saved_config=saved, print_fn=lambda line: None)
    assert str(path) in str(refused.value) and HOLE in str(refused.value)
    assert "\n" not in str(refused.value) and path.read_text() == json.dumps(holed)

    shutil.rmtree(run_dir / "checkpoints" / "4")
    (run_dir / "checksums" / "4.sha256").unlink()
    after = json.loads(written)
    for run in after["runs"]:
        run["curve"]["eval/pass_at_1"][2] = math.nan
    path.write_text(json.dumps(after))
    resumed = finetuning.finetune(TWO_PERIODS, runs, params, TINY, run_dir, resume=True,
                                  saved_config=saved, print_fn=lambda line: None)
    assert json.dumps([run["curve"] for run in resumed["runs"]]) == json.dumps(
        [run["curve"] for run in straight["runs"]])
