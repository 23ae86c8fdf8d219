"""The fine-tuning shell (critkl.runs.finetuning) and sweeps: a vmapped sweep equals its runs
alone, a diverging run stops the sweep before it saves, a resumed sweep equals an
uninterrupted one; grids, ranges, paired differences and merged sweeps."""

import dataclasses
import json
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critkl import rl
from critkl.config import HYPER_NAMES, HYPER_RANGES, RLHyper
from critkl.runs import finetuning
from critkl.model import init_params

from tests.test_rl import QUICK, TINY
from tests.test_tracking import assert_same_scalars

TWO_PERIODS = dataclasses.replace(QUICK, iterations=4, eval_every=2)


@pytest.mark.parametrize("split", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_vmapped_sweep_equals_separate_runs(split):
    """A sweep vmapped on one device, and (slow set: about 60 s more, a third compilation)
    split over 2 devices (each device maps over its own runs, and the compiled sweep moves no
    run's data between devices) = each run alone."""
    from critkl.infra import parallel

    params = init_params(jax.random.key(0), TINY)
    train = rl.make_train(QUICK, TINY).train
    seeds = [0, 1, 2, 3]
    hypers = [dataclasses.replace(RLHyper(), learning_rate=lr) for lr in (1e-4, 3e-4, 1e-3, 1e-3)]
    rngs = jnp.stack([jax.random.key(s) for s in seeds])
    one_device = jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(
        rngs, rl.stack_hypers(hypers), params)
    sweeps = [one_device]
    if split:
        mesh = parallel.data_mesh(jax.devices()[:2])
        by_run = parallel.batch_sharding(mesh)
        split_train = jax.jit(parallel.over_runs(train, mesh, (0, 0, None)))
        arguments = (parallel.put(rngs, by_run), parallel.put(rl.stack_hypers(hypers), by_run),
                     params)
        assert "all-gather" not in split_train.lower(*arguments).compile().as_text()
        sweeps.append(split_train(*arguments))
    single = jax.jit(train)
    for index, (seed, hyper) in enumerate(zip(seeds, hypers)):
        state, _, metrics = single(jax.random.key(seed), jax.tree.map(jnp.float32, hyper), params)
        for swept_state, _, swept_metrics in sweeps:
            chex.assert_trees_all_close(jax.tree.map(lambda x: x[index], swept_state.policy),
                                        state.policy, atol=1e-5, rtol=1e-4)
            np.testing.assert_allclose(swept_metrics[0]["train/success"][index],
                                       metrics[0]["train/success"])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), one_device[0].policy,
                         jax.tree.map(lambda x: jnp.stack([x] * 4), params))
    assert max(jax.tree.leaves(moved)) > 0  # the runs did update the policy


@pytest.mark.slow  # two sweeps compiled; padding is in the default suite's preemption test
def test_a_sweep_padded_to_the_devices_equals_its_runs_on_one_device(tmp_path, monkeypatch):
    """3 runs on 8 devices (5 copies of the last run fill them, dropped) = the 3 runs mapped
    on one device: every evaluation and training metric of results.json."""
    from critkl.infra import parallel

    params = init_params(jax.random.key(0), TINY)
    runs = finetuning.grid_runs(range(3), {"learning_rate": [3e-4, 1e-3]}, RLHyper())[:3]
    lines = []
    padded = finetuning.finetune(QUICK, runs, params, TINY, tmp_path / "padded",
                                 print_fn=lines.append)
    assert any(line.startswith("warning: 3 runs do not split evenly") for line in lines)
    every_device = parallel.data_mesh
    monkeypatch.setattr(parallel, "data_mesh", lambda: every_device(jax.devices()[:1]))
    alone = finetuning.finetune(QUICK, runs, params, TINY, tmp_path / "alone",
                                print_fn=lambda line: None)
    for a, b in zip(padded["runs"], alone["runs"], strict=True):
        for key, values in a["curve"].items():
            np.testing.assert_allclose(values, b["curve"][key], rtol=1e-4, atol=1e-5,
                                       err_msg=key)


@pytest.mark.slow  # 30-60 s; the default suite stays under 10 minutes on 2 cores
def test_a_diverging_sweep_stops_before_saving(tmp_path):
    from critkl.infra import checkpoint
    from critkl.runs.divergence import TrainingDiverged

    params = init_params(jax.random.key(0), TINY)
    # The resume test's sweep structure (8 runs, one per device): compiled once for both.
    runs = finetuning.grid_runs(range(4), {"learning_rate": [1e-4, 1e30]}, RLHyper())
    config = TWO_PERIODS
    with pytest.raises(TrainingDiverged, match="learning_rate=1e\\+30,seed=0"):
        finetuning.finetune(config, runs, params, TINY, tmp_path / "x", print_fn=lambda line: None)
    assert checkpoint.latest_checkpoint_step(tmp_path / "x") is None


@pytest.mark.slow  # ~85 s; resume exactness stays in the default suite by
# test_sigterm_within_a_period_saves_that_iteration_and_resumes_exactly
def test_finetune_resume_equals_uninterrupted(tmp_path):
    params = init_params(jax.random.key(0), TINY)
    config = TWO_PERIODS
    runs = finetuning.grid_runs(range(8), {"learning_rate": [3e-4]}, RLHyper())  # 8 devices: sharded
    straight = finetuning.finetune(config, runs, params, TINY, tmp_path / "straight",
                                 print_fn=lambda line: None)
    assert sorted(int(step.name) for step in (tmp_path / "straight" / "checkpoints").iterdir()
                  if step.name.isdigit()) == [2, 4]  # a damaged last checkpoint leaves one

    class Killed(Exception):
        pass

    def die(line):  # killed right after the first period's checkpoint
        if line.startswith(f"iteration {config.eval_every}/"):
            raise Killed

    with pytest.raises(Killed):
        finetuning.finetune(config, runs, params, TINY, tmp_path / "cut", print_fn=die)
    # As if killed while saving the second period's checkpoint: results.json already holds
    # that period, the checkpoint does not. Resume must not record it twice.
    path = tmp_path / "cut" / "results.json"
    results = json.loads(path.read_text())
    for run in results["runs"]:
        run["curve"] = {k: v + [2 * config.eval_every if k == "iteration" else v[-1]]
                        for k, v in run["curve"].items()}
    path.write_text(json.dumps(results))
    resumed = finetuning.finetune(config, runs, params, TINY, tmp_path / "cut", resume=True,
                                print_fn=lambda line: None)
    for a, b in zip(straight["runs"], resumed["runs"]):
        assert a["curve"] == b["curve"]
    assert_same_scalars(tmp_path / "cut" / "tensorboard", tmp_path / "straight" / "tensorboard")
    assert set(straight["summary"]) == {"all"}
    # The shell's calls (one iteration or evaluation each) = the run as one jitted program.
    _, before, (train, evaluation) = jax.jit(rl.make_train(config, TINY).train)(
        jax.random.key(runs[0].seed), jax.tree.map(jnp.float32, runs[0].hyper), params)
    curve = straight["runs"][0]["curve"]
    for key in ("eval/sampled_success", "eval/pass_at_1", "critical/p_right_comma"):
        np.testing.assert_allclose(curve[key], [before[key], *evaluation[key]], atol=1e-6,
                                   err_msg=key)
    np.testing.assert_allclose(curve["train/success"], train["train/success"].mean(axis=1),
                               atol=1e-6)


def test_grid_runs_and_hyper_errors():
    runs = finetuning.grid_runs([0, 1], {"beta": [0, 150], "kl_coef": [5]}, RLHyper())
    assert [r.name for r in runs] == ["beta=0,seed=0", "beta=0,seed=1", "beta=150,seed=0",
                                      "beta=150,seed=1"]
    assert runs[2].hyper.loss.beta == 150 and runs[2].hyper.loss.kl_coef == 5
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        finetuning.grid_runs([0], {"betta": [1.0]}, RLHyper())


def _invalid_values(name):
    """Values outside each hyperparameter's range, generated from the range itself."""
    low, high, low_in, high_in = HYPER_RANGES[name]
    values = [float("nan"), float("inf"), -float("inf")]
    if np.isfinite(low):
        values += [low - 1.0] + ([] if low_in else [low])
    if np.isfinite(high):
        values += [high + 0.5] + ([] if high_in else [high])
    return values


@pytest.mark.parametrize("name", HYPER_NAMES)
def test_every_hyperparameter_is_range_checked(name):
    assert name in HYPER_RANGES
    default = getattr(RLHyper(), name, None)
    default = getattr(RLHyper().loss, name) if default is None else default
    finetuning.grid_runs([0], {name: [default]}, RLHyper())  # the default is allowed
    for value in _invalid_values(name):
        with pytest.raises(ValueError, match=f"{name}="):
            finetuning.grid_runs([0], {name: [value]}, RLHyper())


def test_repeated_seeds_are_refused():
    with pytest.raises(ValueError, match="repeat a seed"):
        finetuning.grid_runs([0, 1, 0], {}, RLHyper())


def test_paired_differences_pair_runs_by_seed():
    rng = np.random.default_rng(0)
    runs = [{"setting": setting, "seed": seed,
             "curve": {"eval/pass_at_1": list(rng.random(3)), "eval/sampled_success": [0.1, 0.2]}}
            for setting in ("beta=0", "beta=150") for seed in (3, 1, 2)]
    table = finetuning.paired_differences({"runs": runs}, "beta=0")
    by = {(r["setting"], r["seed"]): r["curve"]["eval/pass_at_1"][-1] for r in runs}
    diffs = np.array([by[("beta=150", s)] - by[("beta=0", s)] for s in (1, 2, 3)])
    mean, low, high = table["beta=150"]["eval/pass_at_1"]
    np.testing.assert_allclose(mean, diffs.mean())
    assert diffs.min() <= low < mean < high <= diffs.max()  # a bootstrap over the 3 seeds
    assert table["beta=150"]["eval/sampled_success"][0] == 0.0
    table = finetuning.markdown_differences({"runs": runs}, "beta=0")
    assert "| setting - beta=0 |" in table and "| beta=150 |" in table  # no values: names
    for run in runs:  # with the values of each run, the table names its KL
        beta = float(run["setting"].removeprefix("beta="))
        run["hyper"] = jax.tree.map(float, dataclasses.asdict(dataclasses.replace(
            RLHyper(), loss=dataclasses.replace(RLHyper().loss, beta=beta))))
    table = finetuning.markdown_differences({"runs": runs}, "beta=0")
    assert "| setting - standard KL |" in table and "| prioritized KL (β 150) |" in table


def test_merged_sweeps_are_named_by_what_differs():
    kl_label = finetuning.kl_label

    def sweep(grid):
        runs = finetuning.grid_runs([0, 1], grid, RLHyper())
        return {"runs": [{"name": r.name, "seed": r.seed, "setting": r.setting, "curve": {},
                          "hyper": jax.tree.map(float, dataclasses.asdict(r.hyper))}
                         for r in runs]}

    merged = finetuning.merge([sweep({"beta": [0, 150]}), sweep({"kl_coef": [0, 5], "beta": [50]})])
    settings = finetuning.settings_in_order(run["setting"] for run in merged["runs"])
    assert settings == ["kl_coef=5,beta=0", "kl_coef=5,beta=150", "kl_coef=0,beta=50",
                        "kl_coef=5,beta=50"]
    values = dict(zip((run["setting"] for run in merged["runs"]),
                      finetuning.swept_values(merged["runs"])))
    assert values["kl_coef=5,beta=150"] == {"kl_coef": 5.0, "beta": 150.0}
    assert [kl_label(s, values[s]) for s in settings] == [
        "standard KL, kl_coef=5", "prioritized KL (β 150), kl_coef=5", "no KL",
        "prioritized KL (β 50), kl_coef=5"]
    alone = sweep({"beta": [0, 150]})["runs"]
    assert [kl_label(r["setting"], v) for r, v in zip(alone, finetuning.swept_values(alone))][:2] \
        == ["standard KL", "standard KL"]
    assert kl_label("arm", {"learning_rate": 1e-3}) == "arm"


def test_settings_keep_the_grid_order():
    runs = finetuning.grid_runs([0, 1], {"beta": [0, 50, 150]}, RLHyper())
    results = {"runs": [{"setting": run.setting,
                         "curve": {key: [0.5, 0.25] for key in (
                             "eval/pass_at_1", "eval/comfort_pass_at_1",
                             "critical/p_right_comma")}} for run in runs]}
    assert list(finetuning.summary(results)) == ["beta=0", "beta=50", "beta=150"]


def test_sigterm_within_a_period_saves_that_iteration_and_resumes_exactly(tmp_path):
    """A real SIGTERM (delivered to this process) before the first iteration: the sweep saves
    after iteration 1, within the first evaluation period, and stops with Preempted; resumed,
    results.json, TensorBoard and the final state equal an uninterrupted run's."""
    from critkl.infra import checkpoint
    from critkl.runs.preemption import Preempted

    params = init_params(jax.random.key(0), TINY)
    # 6 runs on 8 devices: padded with 2 copies of the last run, which the checkpoints leave out
    runs = finetuning.grid_runs(range(6), {"learning_rate": [3e-4]}, RLHyper())
    straight = finetuning.finetune(TWO_PERIODS, runs, params, TINY, tmp_path / "straight",
                                   print_fn=lambda line: None)

    def signal_before_training(line):
        if line.startswith("iteration 0 "):
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Preempted, match="SIGTERM after saving iteration 1"):
        finetuning.finetune(TWO_PERIODS, runs, params, TINY, tmp_path / "cut",
                            print_fn=signal_before_training)
    assert checkpoint.latest_checkpoint_step(tmp_path / "cut") == 1
    resumed = finetuning.finetune(TWO_PERIODS, runs, params, TINY, tmp_path / "cut", resume=True,
                                  print_fn=lambda line: None)
    assert [run["curve"] for run in resumed["runs"]] == [run["curve"] for run in straight["runs"]]
    assert_same_scalars(tmp_path / "cut" / "tensorboard", tmp_path / "straight" / "tensorboard")
    assert digest(tmp_path / "cut") == digest(tmp_path / "straight")


def digest(run_dir) -> str:
    """The recorded SHA-256 of a run's last checkpoint (equal digests: bit-identical states)."""
    from critkl.infra import checkpoint

    step = checkpoint.latest_checkpoint_step(run_dir)
    return (run_dir / "checksums" / f"{step}.sha256").read_text()


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A tiny pre-trained model, the `critkl sweep` arguments of a 6-iteration sweep of it
    (8 runs, 2 evaluation periods) and that sweep run uninterrupted."""
    from critkl import cli
    from critkl.runs import pretraining
    from tests.test_pretrain import TINY as PRETRAIN

    root = tmp_path_factory.mktemp("sweep")
    pretraining.pretrain(dataclasses.replace(PRETRAIN, steps=3), root / "model",
                         print_fn=lambda line: None)
    sweep = ["sweep", str(root / "model"), "--seeds", "0,1,2,3,4,5,6,7", "--iterations", "6",
             "--eval-every", "3", "--episodes", "4", "--ppo-epochs", "1", "--minibatches", "2",
             "--eval-episodes", "4", "--value-hidden-sizes", "16,16", "--extra-digits", "1"]
    assert cli.main(sweep + ["--run-dir", str(root / "straight")]) == 0
    return sweep, root / "straight"


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_to_the_sweep_command_saves_and_the_resumed_sweep_is_exact(
        tmp_path, tiny_sweep, signal_number):
    """SIGTERM or SIGINT to a real `critkl sweep` process once it trains: it saves the
    iteration running, exits 75 with one line saying how to continue; that command ends
    with the uninterrupted sweep's state, results.json and TensorBoard."""
    import re
    import shlex

    from critkl import cli
    from critkl.infra import checkpoint

    sweep, straight = tiny_sweep
    cut = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-m", "critkl.cli", *sweep, "--run-dir", str(cut)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the evaluation before training: training starts next
        if line.startswith("iteration 0 "):
            break
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 75, err
    assert "Traceback" not in err
    stopped = re.search(rf"stopped by {signal.Signals(signal_number).name} after saving "
                        r"iteration (\d+); continue with: critkl (.*--resume)$", err.strip())
    assert stopped, err
    assert 1 <= int(stopped[1]) < 6 and checkpoint.latest_checkpoint_step(cut) == int(stopped[1])
    assert cli.main(shlex.split(stopped[2])) == 0
    cut_runs, straight_runs = (json.loads((folder / "results.json").read_text())["runs"]
                               for folder in (cut, straight))
    assert [run["curve"] for run in cut_runs] == [run["curve"] for run in straight_runs]
    assert_same_scalars(cut / "tensorboard", straight / "tensorboard")
    assert digest(cut) == digest(straight)


def test_a_finished_sweep_is_reused_from_its_results_alone(tmp_path, monkeypatch):
    """A finished sweep kept as results.json and config.json (its checkpoints gone, as in a
    fresh checkout of committed results) is reused, not run again; a cut-off one is run; one
    started with other settings is refused by name."""
    import shutil
    import types

    from critkl.infra import checkpoint
    from critkl.runs.spec import Sweep, run_sweep

    params = init_params(jax.random.key(0), TINY)
    pre = types.SimpleNamespace(model_config=TINY, max_digits=TWO_PERIODS.n,
                                task=TWO_PERIODS.task, task_params=TWO_PERIODS.task_params)
    grid = {"kl_coef": [0.5]}

    def sweep(run_dir, grid, print_fn=lambda line: None):
        return run_sweep(Sweep("tiny", TWO_PERIODS, RLHyper(), [0, 1], grid), run_dir,
                         model=(pre, params), print_fn=print_fn)

    # Within an evaluation period a progress line at most every PROGRESS_SECONDS (0: every
    # iteration); the evaluation before training is announced before it compiles.
    monkeypatch.setattr(finetuning, "PROGRESS_SECONDS", 0)
    shown = []
    straight = sweep(tmp_path / "straight", grid, shown.append)
    assert shown[1].startswith("warning: 2 runs do not split evenly over 8 devices: 6 copies")
    assert shown[2].startswith("evaluating the pre-trained model")
    progress = [line for line in shown if line.startswith("iteration ")]
    assert [line.split()[1] for line in progress] == ["0", "1/4", "2/4", "3/4", "4/4"]
    assert "ETA" in progress[1] and "sampled" not in progress[1]
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("results.json", "config.json"):
        shutil.copy(tmp_path / "straight" / name, kept / name)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the sweep ran again")

    monkeypatch.setattr(finetuning, "finetune", must_not_run)
    lines = []
    reused = sweep(kept, grid, lines.append)
    assert lines == [f"reusing the finished sweep in {kept} (its results.json)"]
    assert [run["curve"] for run in reused["runs"]] == [run["curve"] for run in straight["runs"]]
    assert json.dumps(reused["summary"]) == json.dumps(straight["summary"])

    with pytest.raises(checkpoint.CheckpointError, match="kl_coef"):
        sweep(kept, {"kl_coef": [0.25]})
    results = json.loads((kept / "results.json").read_text())
    for run in results["runs"]:  # cut off after the first evaluation period
        run["curve"] = {key: values[:-1] for key, values in run["curve"].items()}
    (kept / "results.json").write_text(json.dumps(results))
    with pytest.raises(AssertionError, match="ran again"):
        sweep(kept, grid)

