"""Fine-tuning runs and sweeps: the I/O shell around `critkl.rl`.

A sweep is a list of runs (a seed and hyperparameters each) executed as vmapped,
jitted programs, one iteration or evaluation per call; progress is printed,
TensorBoard written and the state checkpointed after each evaluation period (and at
the iteration where a signal stops it), and a run that was cut off resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from critkl import losses, rl, strategy as strategies
from critkl.infra import checkpoint, files, host_memory, parallel, provenance
from critkl.runs import directory
from critkl.config import (check_seed, check_value, HYPER_NAMES, HYPER_RANGES, ModelConfig,
                           RLConfig, RLHyper, setting_name, with_values)
from critkl.runs.divergence import TrainingDiverged, finite_per_run
from critkl.runs.preemption import Preempted, PreemptionRequests
from critkl.statistics import mean_interval, paired_test, t_interval
from critkl.infra.tracking import Tracker


# Training metrics kept in results.json, as their mean over each evaluation period.
CURVE_TRAIN_KEYS = ("train/success", "loss/kl") + tuple(
    f"loss/{kind}_w_{bucket}" for kind in ("kl", "tokens") for bucket, _, _ in losses.KL_BUCKETS)
# results.json of a run stopped within an evaluation period: the training metrics of the
# period's iterations so far ([{"iteration": i, "metrics": {name: [dtype, per run]}}]).
UNFINISHED = "unfinished_period"


@dataclasses.dataclass(frozen=True)
class Run:
    seed: int
    hyper: RLHyper
    setting: str  # the hyperparameters that differ across the sweep, e.g. "beta=150"

    @property
    def name(self) -> str:
        return f"{self.setting},seed={self.seed}" if self.setting else f"seed={self.seed}"


def grid_runs(seeds, grid: dict[str, list[float]], base: RLHyper) -> list[Run]:
    """Every combination of the grid's values, for every seed. Raises ValueError for a value
    outside its range (`HYPER_RANGES`) or a seed given twice."""
    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed: repeated runs are not independent")
    for index, seed in enumerate(seeds):
        check_seed(f"seeds[{index}]", seed)
    for name, values in grid.items():
        for value in values:
            if name in HYPER_RANGES:
                check_value(name, float(value))
    names = list(grid)
    runs = []
    for values in itertools.product(*(grid[name] for name in names)):
        setting = setting_name({name: value for name, value in zip(names, values)
                                if len(grid[name]) > 1})
        hyper = with_values(base, dict(zip(names, values)))
        runs += [Run(seed, hyper, setting) for seed in seeds]
    return runs


def settings_in_order(settings) -> list[str]:
    """Distinct settings in the order of the sweep's grid (first appearance), not as strings
    sort ("beta=0, beta=50, beta=150", not "beta=0, beta=150, beta=50")."""
    return list(dict.fromkeys(settings))


PROGRESS_SECONDS = 60  # within an evaluation period, a progress line at most this often
HISTOGRAM_PREFIX = "hist/"  # training metrics that are histograms (`rl.unit_histogram`)


class _Log:
    """Per-run and per-setting (mean, 95% interval) TensorBoard curves and results.json.
    `keep_until`: the iteration resumed from (-1: a fresh start), see `Tracker`."""

    def __init__(self, run_dir: Path, runs: list[Run], results: dict, keep_until: int):
        self.run_dir, self.runs, self.results = run_dir, runs, results
        main = jax.process_index() == 0
        self.trackers = [Tracker(run_dir / "tensorboard" / run.name, enabled=main,
                                 keep_until=keep_until) for run in runs]
        self.settings = settings_in_order(run.setting for run in runs)
        self.aggregate = {s: Tracker(run_dir / "tensorboard" / f"mean[{s or 'all'}]", enabled=main,
                                     keep_until=keep_until) for s in self.settings}

    def hparams(self, config: RLConfig) -> None:
        """Each run's hyperparameters in TensorBoard's HParams tab: the swept ones, the seed,
        the weighting and the task, against the summary metrics."""
        values = swept_values([{"hyper": jax.tree.map(float, dataclasses.asdict(r.hyper))}
                               for r in self.runs])
        weighting = ("standard" if not config.loss.prioritized else
                     f"{config.loss.weight_signal}/{config.loss.weight_rule}/"
                     f"{'+'.join(config.loss.weight_targets)}")
        for tracker, run, swept in zip(self.trackers, self.runs, values):
            tracker.hparams({**swept, "seed": run.seed, "weighting": weighting,
                             "task": config.task, "kl_coef": run.hyper.loss.kl_coef,
                             "beta": run.hyper.loss.beta}, list(SUMMARY_KEYS))

    def train(self, iteration: int, metrics: dict[str, np.ndarray]) -> None:
        """An iteration's training metrics (name -> [runs], "hist/" ones [runs, bins]) in
        TensorBoard."""
        for index, tracker in enumerate(self.trackers):
            tracker.scalars(iteration, {k: v[index] for k, v in metrics.items()
                                        if not k.startswith(HISTOGRAM_PREFIX)})
            for k, v in metrics.items():
                if k.startswith(HISTOGRAM_PREFIX):
                    tracker.histogram(iteration, k, v[index])

    def unfinished(self, iterations: list[int], train: list[dict[str, np.ndarray]]) -> None:
        """Save the training metrics of the evaluation period so far (a stop within it)."""
        self.results[UNFINISHED] = [
            {"iteration": i, "metrics": {k: [str(v.dtype), v.tolist()] for k, v in m.items()}}
            for i, m in zip(iterations, train)]
        self.save()

    def record(self, eval_step: int, evaluation: dict[str, np.ndarray],
               train: dict[str, np.ndarray] | None = None) -> None:
        """evaluation: name -> [runs] at eval_step; train: name -> [runs, iterations] of
        the period it ends (none for the evaluation before training)."""
        self.results.pop(UNFINISHED, None)
        for index, tracker in enumerate(self.trackers):
            curve = self.results["runs"][index]["curve"]
            tracker.scalars(eval_step, {k: v[index] for k, v in evaluation.items()})
            curve.setdefault("iteration", []).append(eval_step)
            if train is not None:
                for k in CURVE_TRAIN_KEYS:
                    curve.setdefault(k, []).append(float(train[k][index].mean()))
            for k, v in evaluation.items():
                curve.setdefault(k, []).append(float(v[index]))
        for setting, tracker in self.aggregate.items():
            members = [i for i, run in enumerate(self.runs) if run.setting == setting]
            for k, v in evaluation.items():
                mean, low, high = mean_interval(v[members])
                tracker.scalars(eval_step, {f"{k}/mean": mean, f"{k}/low": low, f"{k}/high": high})
        self.save()

    def save(self) -> None:
        if jax.process_index() == 0:
            files.write_atomic(self.run_dir / "results.json", json.dumps(self.results, indent=1))

    def flush(self) -> None:
        for tracker in self.trackers + list(self.aggregate.values()):
            tracker.flush()

    def close(self) -> None:
        for tracker in self.trackers + list(self.aggregate.values()):
            tracker.close()


# Evaluation metrics of the summary table, where the runs have them.
SUMMARY_KEYS = ("eval/sampled_success", "eval/pass_at_1", "eval/comfort_pass_at_1",
                "causal/p_right", "critical/p_right_comma")


# Curves that are rates (success rates, pass@1): inside [0, 1].
RATE_MARKS = ("success", "pass_at_1", "sampled_")
# Curves over tokens that an evaluation may lack: NaN then (`rl.mean_where`), JSON's NaN.
MAY_BE_ABSENT = ("critical/", "causal/")


def check_results(results: Any, eval_every: int | None = None) -> None:
    """ValueError naming the first field of a results.json (read back, e.g. by `critkl plot`)
    that is not as sweeps write it: runs, each with a setting, a seed and curves of numbers,
    the curves of one setting's runs equally long. In each run: "iteration" 0, `eval_every`
    (default: its second point), 2 `eval_every`, ... without a hole; every evaluation curve
    as long, every `CURVE_TRAIN_KEYS` curve one shorter (none before training); values
    finite but NaN in `MAY_BE_ABSENT` curves; rates (`RATE_MARKS`) inside [0, 1]."""
    runs = results.get("runs") if isinstance(results, dict) else None
    if not isinstance(runs, list) or not runs:
        raise ValueError("'runs' is missing or empty, expected a list of runs")
    lengths = {}
    for index, run in enumerate(runs):
        where = f"runs[{index}]"
        if not isinstance(run, dict) or not isinstance(run.get("setting"), str) \
                or type(run.get("seed")) is not int or not isinstance(run.get("curve"), dict):
            raise ValueError(f"{where} needs 'setting' (text), 'seed' (an integer) and 'curve' "
                             "(an object)")
        for key, values in run["curve"].items():
            if not isinstance(values, list) or not all(
                    type(v) in (int, float) for v in values):
                raise ValueError(f"{where}.curve[{key!r}] is not a list of numbers")
        shape = {key: len(values) for key, values in run["curve"].items()}
        first = lengths.setdefault(run["setting"], shape)
        if shape != first:
            raise ValueError(f"{where}.curve has other metrics or lengths than the first run of "
                             f"setting {run['setting']!r}")
        name = run.get("name", f"seed={run['seed']}")
        _check_curve(f"{where} (run {name!r})", run["curve"], eval_every)


def _check_curve(where: str, curve: dict[str, list], eval_every: int | None) -> None:
    """`check_results` of one run's curves."""
    steps = curve.get("iteration")
    if not steps or not all(type(step) is int for step in steps):
        raise ValueError(f"{where}: curve['iteration'] is missing, empty or not whole numbers")
    if steps[0] != 0:
        raise ValueError(f"{where}: curve['iteration'] starts at {steps[0]}, not at 0 (the "
                         "evaluation before training)")
    every = eval_every or (steps[1] if len(steps) > 1 else 1)
    for earlier, step in zip(steps, steps[1:]):
        if step <= earlier:
            raise ValueError(f"{where}: curve['iteration'] is not ascending ({earlier} is "
                             f"followed by {step})")
        if step != earlier + every:
            raise ValueError(f"{where}: curve['iteration'] has no evaluation at "
                             f"{earlier + every} ({earlier} is followed by {step}; one every "
                             f"{every} iterations)")
    for key, values in curve.items():
        expected = len(steps) - 1 if key in CURVE_TRAIN_KEYS else len(steps)
        if len(values) != expected:
            raise ValueError(f"{where}: curve[{key!r}] has {len(values)} points for "
                             f"{len(steps)} evaluations, expected {expected}")
        for point, value in enumerate(values):
            if not (np.isfinite(value) or np.isnan(value) and key.startswith(MAY_BE_ABSENT)):
                raise ValueError(f"{where}: curve[{key!r}][{point}] is {value}, expected a "
                                 "finite number")
            if any(mark in key for mark in RATE_MARKS) and not 0 <= value <= 1:
                raise ValueError(f"{where}: curve[{key!r}][{point}] is {value}, a rate outside "
                                 "[0, 1]")


def summary(results: dict) -> dict[str, dict[str, Any]]:
    """Per setting: mean and 95% interval over seeds of each `SUMMARY_KEYS` metric at the
    end ("eval/...") and before training ("before/eval/...")."""
    table = {}
    for setting in settings_in_order(run["setting"] for run in results["runs"]):
        members = [run for run in results["runs"] if run["setting"] == setting]
        row = {"runs": len(members)}
        for key in SUMMARY_KEYS:
            if key in members[0]["curve"]:
                row[key] = mean_interval(np.array([run["curve"][key][-1] for run in members]))
                row[f"before/{key}"] = mean_interval(
                    np.array([run["curve"][key][0] for run in members]))
        table[setting or "all"] = row
    return table


def _results_up_to(run_dir: Path, iteration: int,
                   eval_every: int) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """results.json of a run being resumed, without what was recorded after `iteration`, the
    restored checkpoint's (a run killed while saving a checkpoint has recorded the period
    that the checkpoint lacks; it is run again), and the training metrics of the iterations
    of `iteration`'s evaluation period up to it (`UNFINISHED`)."""
    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
        for run in results["runs"]:
            curve = run["curve"]
            kept = sum(1 for step in curve["iteration"] if step <= iteration)
            total = len(curve["iteration"])
            # Evaluations have a point at every iteration listed, training metrics one fewer.
            run["curve"] = {key: values[:kept - (total - len(values))]
                            for key, values in curve.items()}
        check_results(results, eval_every)
        last = iteration - iteration % eval_every  # the last evaluation the checkpoint has
        for index, run in enumerate(results["runs"]):
            if run["curve"]["iteration"][-1] != last:
                name = run.get("name", f"seed={run['seed']}")
                raise ValueError(f"runs[{index}] (run {name!r}) has no evaluation at {last}, "
                                 f"which the checkpoint of iteration {iteration} holds")
        unfinished = [record for record in results.pop(UNFINISHED, [])
                      if record["iteration"] <= iteration]
        wanted = list(range(last + 1, iteration + 1))
        if [record["iteration"] for record in unfinished] != wanted:
            raise ValueError(f"{UNFINISHED} holds iterations "
                             f"{[record['iteration'] for record in unfinished]}, not {wanted}")
        train = [{k: np.asarray(values, dtype=dtype)
                  for k, (dtype, values) in record["metrics"].items()} for record in unfinished]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise checkpoint.CheckpointError(
            f"{path} cannot be read back to resume the run ({type(error).__name__}: {error}); "
            "it is missing or damaged. Start a new run in another directory.") from None
    return results, train


def _check_finite(state: rl.RunState, runs: list[Run], iteration: int, saved: int) -> None:
    """Raise TrainingDiverged, before anything is saved, when a run's state is not finite."""
    finite = parallel.fetch(finite_per_run((state.policy, state.value, state.opt_state)))
    bad = [run.name for run, ok in zip(runs, finite) if not ok]
    if bad:
        raise TrainingDiverged(
            f"{len(bad)} of {len(runs)} runs diverged by iteration {iteration} (non-finite "
            f"parameters: {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}); nothing of it "
            f"was saved, the last checkpoint is of iteration {saved}. Lower the learning rate "
            "of those runs.")


def _first_runs(tree, count: int):
    """`tree` (leading axis: runs) cut to its first `count` runs."""
    return jax.tree.map(lambda x: x[:count], tree)


def _padded(tree, extra: int):
    """`tree` (leading axis: runs) with its last run repeated `extra` times."""
    return jax.tree.map(lambda x: jnp.concatenate([x] + [x[-1:]] * extra), tree) if extra else tree


class Programs:
    """The jitted init, iteration and evaluation of a sweep's structure, vmapped over runs
    (split over `mesh`'s devices; None: all on each device). One per structure
    (`programs_for`), so that sweeps with the same structure in one process compile once.

    An iteration and an evaluation are compiled ahead of their first call, once per number
    of runs (the state's leading axis), and the host memory compiling freed is given back
    before they run: a job's peak is then the larger of compiling and running, not their
    sum. Each call runs one iteration:
    XLA:CPU holds memory a program allocates until the call returns (a 4-run mini sweep on 2
    devices: a call of a period, 5 iterations and an evaluation, peaked 0.7 GB above a call
    of one iteration).
    """

    def __init__(self, config: RLConfig, model_config: ModelConfig, mesh):
        functions = rl.make_train(config, model_config, strategies.for_devices(
            None if mesh is None else mesh.devices.flat))

        def evaluate(state: rl.RunState, hyper: RLHyper, pretrained):
            return functions.evaluate(state.policy, state.eval_rng, hyper, pretrained)

        self.init = jax.jit(parallel.over_runs(functions.init, mesh, (0, 0, None)))
        self._jitted = {
            "iteration": jax.jit(parallel.over_runs(functions.iteration, mesh, (0, 0, None)),
                                 donate_argnums=0),
            "evaluate": jax.jit(parallel.over_runs(evaluate, mesh, (0, 0, None)))}
        self._compiled = {}

    def __call__(self, name: str, state: rl.RunState, *args):
        """Program `name` ("iteration" or "evaluate") on (state, *args)."""
        key = (name, state.iteration.shape)
        if key not in self._compiled:
            self._compiled[key] = self._jitted[name].lower(state, *args).compile()
        host_memory.release_freed()  # what compiling and the last call freed
        return self._compiled[key](state, *args)


@functools.lru_cache(maxsize=8)
def programs_for(config: RLConfig, model_config: ModelConfig, mesh) -> Programs:
    return Programs(config, model_config, mesh)


def _config_defaults(saved_config: dict | None) -> dict:
    """Settings added to critkl after a run was made are its own at these values (a run made
    before config.json named its pre-trained model is taken as the one named now)."""
    return {"pretrained": (saved_config or {}).get("pretrained"),
            "rl": dataclasses.asdict(RLConfig()), "base": dataclasses.asdict(RLHyper())}


def finished_results(run_dir: str | Path, saved_config: dict, iterations: int) -> dict | None:
    """The results of the finished run in `run_dir` (its results.json, with every run
    evaluated at `iterations`), needing no checkpoint: a sweep kept as its results.json and
    config.json (committed, say) is reused rather than run again. None when `run_dir` holds no
    finished run; CheckpointError when its config.json differs from `saved_config`."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
        if UNFINISHED in results or not all(
                run["curve"]["iteration"][-1] == iterations for run in results["runs"]):
            return None
        checkpoint.check_same_config(run_dir, saved_config,
                                     defaults=_config_defaults(saved_config))
        check_results(results, saved_config["rl"]["eval_every"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise checkpoint.CheckpointError(
            f"{path} cannot be read back ({type(error).__name__}: {error}); it is damaged. "
            "Restore it from a copy, or run the sweep again in another directory.") from None
    results["summary"] = summary(results)
    return results


def finetune(config: RLConfig, runs: list[Run], pretrained, model_config: ModelConfig,
             run_dir: str | Path, *, resume: bool = False, print_fn=print,
             saved_config: dict | None = None) -> dict:
    """Run (or resume) the runs side by side. Returns results (also in results.json). On
    SIGTERM or SIGINT it saves at the end of the iteration running, with results.json and
    TensorBoard, and raises `Preempted` (a second signal stops at once)."""
    run_dir = Path(run_dir)
    mesh = parallel.data_mesh()
    # Runs are independent: split over the devices, padded to a multiple of them.
    extra = -len(runs) % mesh.devices.size
    placed = runs + [runs[-1]] * extra
    by_run = parallel.batch_sharding(mesh)
    programs = programs_for(config, model_config, mesh)
    hypers = parallel.put(rl.stack_hypers([r.hyper for r in placed]), by_run)
    rngs = jax.vmap(jax.random.key)(jnp.array([r.seed for r in placed]))
    real = functools.partial(_first_runs, count=len(runs))
    pretrained = parallel.put(pretrained, parallel.replicated(mesh))

    # The last two checkpoints: a sweep's state is large (10 runs of the mini model: ~100 MB),
    # results.json keeps every evaluation, a save is atomic (the previous one stays until the
    # new one is complete), and a damaged last one leaves the one before.
    checkpointer = directory.open_run(run_dir, saved_config, resume=resume,
                                      defaults=_config_defaults(saved_config), keep=2)
    try:
        state = parallel.put(programs.init(rngs, hypers, pretrained), by_run)
        train = []  # the training metrics of the evaluation period so far, per iteration
        if resume:  # a checkpoint holds the real runs alone: it resumes on any device count
            state = parallel.put(_padded(checkpointer.restore(target=real(state)), extra),
                                 by_run)
            results, train = _results_up_to(run_dir, int(state.iteration[0]), config.eval_every)
            print_fn(f"resumed {run_dir} at iteration {int(state.iteration[0])}")
        else:
            results = {**provenance.record(), "runs": [
                {"name": r.name, "seed": r.seed, "setting": r.setting,
                 "hyper": jax.tree.map(float, dataclasses.asdict(r.hyper)), "curve": {}}
                for r in runs]}
        first = saved = int(state.iteration[0])
        log = _Log(run_dir, runs, results, keep_until=first if resume else -1)
    except BaseException:
        checkpointer.close()
        raise
    # The handlers stay until the checkpointer is closed, its last write finished: a signal
    # then is a request like any other, and a second one stops at once.
    with PreemptionRequests() as preemption:
        try:
            if not resume:  # TensorBoard names the task and the settings of every run
                log.hparams(config)
                for tracker in log.trackers + list(log.aggregate.values()):
                    tracker.text(0, "config", directory.config_markdown(
                        saved_config or {"rl": dataclasses.asdict(config)}))
            print_fn(f"{len(runs)} runs on {mesh.devices.size} device(s), {config.iterations} "
                     f"iterations of {config.episodes} episodes each; compiling, then one line "
                     f"per {config.eval_every} iterations")
            if extra:
                print_fn(f"warning: {len(runs)} runs do not split evenly over "
                         f"{mesh.devices.size} devices: {extra} copies of the last run fill "
                         f"them, computed and dropped ({extra / len(placed):.0%} of the work); "
                         f"a multiple of {mesh.devices.size} runs wastes none")
            if first == 0:
                print_fn(f"evaluating the pre-trained model: {config.eval_episodes} problems per "
                         f"metric and run (compiling first)")
                before = real(parallel.fetch(programs("evaluate", state, hypers, pretrained)))
                log.record(0, before)
                print_fn(f"iteration 0  sampled {before['eval/sampled_success'].mean():.3f}  "
                         f"pass@1 {before['eval/pass_at_1'].mean():.3f}  "
                         f"comfort {before['eval/comfort_pass_at_1'].mean():.3f}  "
                         "(pre-trained model)")
            clock = shown = time.perf_counter()
            for iteration in range(first + 1, config.iterations + 1):
                state, metrics = programs("iteration", state, hypers, pretrained)
                train.append(real(parallel.fetch(metrics)))
                log.train(iteration, train[-1])
                period_ends = iteration % config.eval_every == 0
                stop_signal = preemption.agreed()
                stopping = stop_signal is not None
                if not (period_ends or stopping):
                    if time.perf_counter() - shown >= PROGRESS_SECONDS:  # a long period
                        shown = time.perf_counter()
                        print_fn(f"iteration {iteration}/{config.iterations}  train success "
                                 f"{train[-1]['train/success'].mean():.3f}  kl "
                                 f"{train[-1]['loss/kl'].mean():.4f}  " + directory.timing(
                                     shown - clock, iteration - first,
                                     config.iterations - first))
                    continue
                _check_finite(state, runs, iteration, saved)
                if period_ends:
                    period = {k: np.stack([m[k] for m in train], axis=1) for k in train[0]}
                    evaluation = real(parallel.fetch(programs("evaluate", state, hypers, pretrained)))
                    log.record(iteration, evaluation, period)
                    train = []
                else:
                    log.unfinished(list(range(iteration - len(train) + 1, iteration + 1)), train)
                log.flush()  # TensorBoard and results.json hold everything up to the checkpoint
                checkpointer.save(iteration, real(state) if extra else state)
                saved = iteration
                if stopping:
                    raise Preempted(stop_signal, iteration, "iteration")
                elapsed = time.perf_counter() - clock
                per_iteration = elapsed / (iteration - first)
                tokens = float(period["train/generated_tokens"].sum())
                print_fn(
                    f"iteration {iteration}/{config.iterations}  "
                    f"train success {period['train/success'].mean():.3f}  "
                    f"sampled {evaluation['eval/sampled_success'].mean():.3f}  "
                    f"pass@1 {evaluation['eval/pass_at_1'].mean():.3f}  "
                    f"comfort {evaluation['eval/comfort_pass_at_1'].mean():.3f}  "
                    f"kl {period['loss/kl'].mean():.4f}  "
                    f"{len(runs) * config.episodes / per_iteration:.1f} episodes/s  "
                    f"{tokens / (config.eval_every * per_iteration):,.0f} tok/s  "
                    + directory.timing(elapsed, iteration - first, config.iterations - first)
                    + f"  (mean of {len(runs)} runs)"
                )
                shown = time.perf_counter()
            results["summary"] = summary(results)
            log.save()
        finally:
            try:
                log.close()
            finally:  # a write failing (OSError) still waits for the checkpoint, frees the lock
                checkpointer.close()
    return results


def per_seed_differences(results: dict, baseline: str, key: str) -> dict[str, np.ndarray]:
    """Per setting other than `baseline`: metric `key` at the end minus the baseline's, one
    value per seed both ran, in seed order (the same seed sees the same evaluation problems
    and the same first rollouts' random stream); settings without `key` are left out."""
    final = {(run["setting"], run["seed"]): run["curve"] for run in results["runs"]}
    seeds = sorted(seed for setting, seed in final if setting == baseline)
    differences = {}
    for setting in settings_in_order(run["setting"] for run in results["runs"]):
        pairs = [(final[(setting, s)], final[(baseline, s)]) for s in seeds
                 if (setting, s) in final]
        if setting != baseline and pairs and key in pairs[0][0]:
            differences[setting] = np.array([a[key][-1] - b[key][-1] for a, b in pairs])
    return differences


def paired_differences(results: dict, baseline: str) -> dict[str, dict[str, tuple]]:
    """Per setting other than `baseline`: for each `SUMMARY_KEYS` metric, the mean and 95%
    interval over seeds of (setting - baseline) at the end, paired by seed
    (`per_seed_differences`)."""
    table = {setting: {} for setting in settings_in_order(run["setting"]
                                                          for run in results["runs"])
             if setting != baseline}
    for key in SUMMARY_KEYS:
        for setting, values in per_seed_differences(results, baseline, key).items():
            table[setting][key] = mean_interval(values)
    return table


def markdown_differences(results: dict, baseline: str) -> str:
    """(setting - baseline) at the end, paired by seed, in percentage points: the mean, its
    percentile-bootstrap interval, its Student-t interval (wider, and honest with 5-9 seeds)
    and the exact sign-flip p; bold where that test gives p < 0.05."""
    by_key = {key: per_seed_differences(results, baseline, key) for key in SUMMARY_KEYS}
    by_key = {key: table for key, table in by_key.items() if table}
    keys = list(by_key)
    label = setting_labels(results)
    lines = [f"| setting - {label.get(baseline, baseline)} | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    for setting in next(iter(by_key.values()), {}):
        cells = []
        for key in keys:
            values = by_key[key][setting]
            mean, low, high = mean_interval(values)
            _, t_low, t_high = t_interval(values)
            p = paired_test(values)
            text = (f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] "
                    f"t [{100 * t_low:+.1f}, {100 * t_high:+.1f}] p {p:.3f}")
            cells.append(f"**{text}**" if p < 0.05 else text)
        lines.append(f"| {label[setting]} | " + " | ".join(cells) + " |")
    lines += ["", "Mean [95% bootstrap interval] t [95% Student-t interval] p (exact sign-flip "
              "test over seeds); bold: p < 0.05."]
    return "\n".join(lines)


def swept_values(runs: list[dict]) -> list[dict[str, float]]:
    """Per run record of results.json: the hyperparameters whose values differ across `runs`,
    read from each run's "hyper" (in `HYPER_NAMES` order), e.g. {"kl_coef": 5.0, "beta": 0.0};
    a hyperparameter added to critkl after a run was made is its default there."""
    defaults = jax.tree.map(float, dataclasses.asdict(RLHyper()))
    defaults = {**{k: v for k, v in defaults.items() if k != "loss"}, **defaults["loss"]}
    flat = [{**defaults, **{k: v for k, v in run["hyper"].items() if k != "loss"},
             **run["hyper"]["loss"]} for run in runs]
    differ = [name for name in HYPER_NAMES if len({f[name] for f in flat}) > 1]
    return [{name: f[name] for name in differ} for f in flat]


def kl_label(setting: str, values: dict[str, float]) -> str:
    """A setting named by its KL, from its swept hyperparameters (`swept_values`):
    {"beta": 150.0} -> "prioritized KL (β 150)"; kl_coef 0 -> "no KL"; the others follow
    ({"kl_coef": 0.1, "beta": 0.0} -> "standard KL, kl_coef=0.1"); a setting that sweeps no
    beta, or an arm named otherwise than by its values, keeps its name."""
    if "=" not in setting:
        return setting
    if values.get("kl_coef", 1.0) == 0:
        return "no KL"
    if "beta" not in values:
        return setting
    beta = values["beta"]
    name = "standard KL" if beta == 0 else f"prioritized KL (β {beta:g})"
    return ", ".join([name, *(f"{k}={v:g}" for k, v in values.items() if k != "beta")])


def setting_labels(results: dict) -> dict[str, str]:
    """Each setting of a sweep's results -> its label for tables (`kl_label`)."""
    runs = results["runs"]
    if not all("hyper" in run for run in runs):  # records made before runs kept their values
        return {run["setting"]: run["setting"] for run in runs}
    return {run["setting"]: kl_label(run["setting"], values)
            for run, values in zip(runs, swept_values(runs))}


def merge(results: list[dict]) -> dict:
    """The runs of several sweeps as one sweep, each run's setting renamed by the
    hyperparameters that differ across all of them (e.g. "kl_coef=5,beta=0")."""
    runs = [dict(run) for result in results for run in result["runs"]]
    for run, values in zip(runs, swept_values(runs)):
        run["setting"] = ",".join(f"{name}={value:g}" for name, value in values.items())
        run["name"] = f"{run['setting']},seed={run['seed']}"
    return {"runs": runs}


def markdown_summary(results: dict) -> str:
    """Each summary metric before and after training, per setting (mean and 95% interval
    over seeds), as Markdown."""
    rows = results["summary"]
    keys = [key for key in SUMMARY_KEYS if key in next(iter(rows.values()))]
    lines = ["| setting | runs | " + " | ".join(f"{key} before -> after" for key in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    cell = lambda m: f"{100 * m[0]:.1f}% [{100 * m[1]:.1f}, {100 * m[2]:.1f}]"  # noqa: E731
    label = setting_labels(results)
    for setting, row in rows.items():
        cells = [f"{cell(row[f'before/{key}'])} -> {cell(row[key])}" for key in keys]
        lines.append(f"| {label.get(setting, setting)} | {row['runs']} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)
