"""Multi-process runs: flags, the local launcher, 2 processes x 4 CPU devices against
1 process x 8, a process killed mid-run, and resuming after it.

Training runs start fresh processes through `critkl launch` (forced CPU devices and
the distributed runtime must be set before JAX starts); they are slow.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from critkl import cli
from critkl.infra import checkpoint, launch

CLI = [sys.executable, "-m", "critkl.cli"]
TINY_PRETRAIN = ["--model", "tiny", "--max-digits", "1", "--eval-extra-digits", "2",
                 "--batch-size", "8", "--warmup-steps", "2", "--learning-rate", "3e-3",
                 "--eval-problems", "4"]
TINY_SWEEP = ["--seeds", "0,1,2,3", "--beta", "0,150", "--iterations", "2", "--eval-every", "1",
              "--episodes", "4", "--minibatches", "2", "--eval-episodes", "4"]


def launched(processes, devices, *command):
    """`critkl launch` of a critkl command: processes x devices CPU devices in all."""
    return CLI + ["launch", "--processes", str(processes), "--cpu-devices", str(devices),
                  "--", *CLI, *command]


def run(command, timeout=600):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_checkpoint(run_dir):
    """The latest checkpoint's leaves as numpy arrays, by path (whatever topology saved it)."""
    step = checkpoint.latest_checkpoint_step(run_dir)
    path = (run_dir / "checkpoints" / str(step) / "default").absolute()
    with ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(path).item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = reader.restore(path, restore_args=as_numpy)
    return step, dict(ocp.tree.to_flat_dict(restored))


def assert_same_checkpoints(run_a, run_b):
    (step_a, a), (step_b, b) = final_checkpoint(run_a), final_checkpoint(run_b)
    assert step_a == step_b and a.keys() == b.keys()
    for key in a:
        if np.issubdtype(a[key].dtype, np.floating):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=str(key))
        else:  # steps, PRNG key data
            np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


@pytest.mark.parametrize(
    "flags, message",
    [(["--num-processes", "2"], "--coordinator, --process-id missing"),
     (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
      "--process-id 2 must be in 0..1"),
     (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
     (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "at least 1")],
)
def test_bad_distributed_flags_give_one_paragraph_and_status_2(tmp_path, capsys, flags, message):
    status = cli.main(["pretrain", "--run-dir", str(tmp_path), *TINY_PRETRAIN, *flags])
    error = capsys.readouterr().err
    assert status == 2
    assert message in error and len(error.strip().splitlines()) == 1
    assert not tmp_path.joinpath("config.json").exists()


def test_launch_without_a_command_is_a_usage_error(capsys):
    assert cli.main(["launch", "--processes", "2"]) == 2
    assert "after --" in capsys.readouterr().err


def test_each_process_gets_its_own_devices(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=x")
    env = launch.process_environment(1, 4, gpus_per_process=2)
    flags = env["XLA_FLAGS"].split()
    assert [f for f in flags if "device_count" in f] == ["--xla_force_host_platform_device_count=4"]
    assert "--xla_dump_to=x" in flags
    assert env["JAX_LOCAL_DEVICE_IDS"] == "2,3"
    assert "JAX_LOCAL_DEVICE_IDS" not in launch.process_environment(1, 4, gpus_per_process=0)


def test_launch_stops_the_others_when_one_process_fails():
    # Process 1 fails at once; process 0 would run for 10 minutes.
    script = ("import sys, time; index = int(sys.argv[sys.argv.index('--process-id') + 1]); "
              "sys.exit(3) if index == 1 else time.sleep(600)")
    said = []
    started = time.monotonic()
    status = launch.launch([sys.executable, "-c", script], 2, 1, say=said.append)
    assert status == 3
    assert time.monotonic() - started < launch.STOP_GRACE + 5
    assert "process 1 (pid" in said[-1] and "exited with status 3" in said[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny pre-training runs, then 8-run sweeps from the first (one run per device), each
    on 2 processes x 4 CPU devices ("two") and on 1 process x 8 ("one"): run dirs and
    the launches' stdout."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for processes, devices, name in ((2, 4, "two"), (1, 8, "one")):
        out[name] = run(launched(processes, devices, "pretrain", "--run-dir", str(root / name),
                                 *TINY_PRETRAIN, "--steps", "6", "--log-every", "1",
                                 "--eval-every", "3", "--checkpoint-every", "2")).stdout
    for processes, devices, name in ((2, 4, "sweep-two"), (1, 8, "sweep-one")):
        out[name] = run(launched(processes, devices, "sweep", str(root / "two"),
                                 "--run-dir", str(root / name), *TINY_SWEEP)).stdout
    return root, out


def sweep_curves(run_dir):
    return [run["curve"] for run in json.loads((run_dir / "results.json").read_text())["runs"]]


@pytest.mark.slow
def test_pretraining_on_two_processes_equals_one(runs):
    """The same parameters, optimizer state and PRNG state after 6 steps. Each device
    samples its own share of the problems, so any process drawing another's share (or
    all drawing the same) would change the result."""
    root, out = runs
    assert_same_checkpoints(root / "two", root / "one")
    # Process 1 is silent on stdout; TensorBoard is written by process 0 alone.
    assert out["two"].count("step 6/6") == 1
    assert len(list((root / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_rl_sweep_on_two_processes_equals_one(runs):
    """2 RL iterations of 8 runs, 4 per process: the same states and evaluation curves."""
    root, out = runs
    assert "8 runs on 8 device(s)" in out["sweep-two"]
    assert_same_checkpoints(root / "sweep-two", root / "sweep-one")
    assert sweep_curves(root / "sweep-two") == sweep_curves(root / "sweep-one")


def kill_process_1(command, run_dir, after_step):
    """Start `command` (a 2-process launch), SIGKILL process 1 once checkpoint `after_step`
    is saved. Returns the launcher's status, its messages, and the seconds it took to
    stop after the kill."""
    with open(run_dir.parent / f"{run_dir.name}.err", "w+") as errors:
        launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            wait_for_checkpoint(run_dir, launcher, after_step)
            errors.seek(0)
            started = [line for line in errors if "process 1 pid" in line][0]
            os.kill(int(started.split("process 1 pid ")[1].split()[0]), signal.SIGKILL)
            killed_at = time.monotonic()
            status = launcher.wait(timeout=60)
            stopped_after = time.monotonic() - killed_at
        finally:
            if launcher.poll() is None:
                launcher.kill()
        errors.seek(0)
        return status, errors.read(), stopped_after


def wait_for_checkpoint(run_dir, process, step, timeout=300):
    deadline = time.monotonic() + timeout
    while (checkpoint.latest_checkpoint_step(run_dir) or 0) < step:
        assert process.poll() is None, "the run stopped before the checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_process_stops_the_launch_and_pretraining_resumes(tmp_path):
    """Process 1 is killed after the first checkpoint: the launcher stops process 0 and
    exits naming process 1 within seconds; resuming on 2 processes ends with the same
    state as a run never interrupted (on 1 process x 8 devices)."""
    steps = ["--steps", "60", "--log-every", "5", "--checkpoint-every", "5", "--eval-every", "60"]
    cut = tmp_path / "cut"
    status, said, stopped_after = kill_process_1(
        launched(2, 4, "pretrain", "--run-dir", str(cut), *TINY_PRETRAIN, *steps), cut, 5)
    assert status != 0 and stopped_after < 30
    assert "process 1 (pid" in said and "was killed by SIGKILL; stopping the other" in said
    saved = checkpoint.latest_checkpoint_step(cut)
    assert 5 <= saved < 60, f"the run should be cut mid-way, its last checkpoint is {saved}"

    resumed = run(launched(2, 4, "pretrain", "--run-dir", str(cut), "--resume", *TINY_PRETRAIN,
                           *steps))
    assert f"resumed {cut} at step {saved}" in resumed.stdout
    run(launched(1, 8, "pretrain", "--run-dir", str(tmp_path / "straight"), *TINY_PRETRAIN, *steps))
    assert_same_checkpoints(cut, tmp_path / "straight")


@pytest.mark.slow
def test_killed_sweep_resumes_on_two_processes(tmp_path, runs):
    """The same for a sweep, whose state is split over the processes (4 runs each)."""
    root, _ = runs
    cut = tmp_path / "sweep-cut"
    command = launched(2, 4, "sweep", str(root / "two"), "--run-dir", str(cut), *TINY_SWEEP)
    status, said, _ = kill_process_1(command, cut, 1)
    assert status != 0 and "process 1 (pid" in said
    assert checkpoint.latest_checkpoint_step(cut) == 1
    assert "resumed" in run(command + ["--resume"]).stdout
    assert_same_checkpoints(cut, root / "sweep-one")
    assert sweep_curves(cut) == sweep_curves(root / "sweep-one")


@pytest.mark.slow
def test_without_the_launcher_a_dead_peer_stops_the_survivor(tmp_path):
    """Processes started one by one, as on the hosts of a TPU slice: when process 1 is
    killed, process 0 stops within the heartbeat timeout with JAX's message, and does
    not hang."""
    coordinator = f"127.0.0.1:{launch.free_port()}"
    run_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        command = CLI + ["pretrain", "--run-dir", str(run_dir), *TINY_PRETRAIN, "--steps", "60",
                         "--checkpoint-every", "5", "--eval-every", "60",
                         "--coordinator", coordinator, "--num-processes", "2",
                         "--process-id", str(index), "--heartbeat-timeout", "10"]
        with open(tmp_path / f"{index}.err", "w") as errors:
            processes.append(subprocess.Popen(command, env=launch.process_environment(index, 4, 0),
                                              stdout=subprocess.DEVNULL, stderr=errors))
    try:
        wait_for_checkpoint(run_dir, processes[0], 5)
        processes[1].kill()
        killed_at = time.monotonic()
        status = processes[0].wait(timeout=60)
        stopped_after = time.monotonic() - killed_at
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    errors = (tmp_path / "0.err").read_text()
    assert status != 0
    assert stopped_after < 60
    assert "another task died" in errors, errors[-3000:]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_after_the_same_step(tmp_path):
    """SIGTERM to process 1 of a 2-process pre-training: both processes save the same step
    together and exit 75, process 0 naming the other's signal; the launcher returns 75; the
    run resumes from that step (before: process 1 alone entered the collective save while
    process 0 went on to the next step's all-reduce)."""
    run_dir = tmp_path / "run"
    command = launched(2, 1, "pretrain", "--run-dir", str(run_dir), *TINY_PRETRAIN,
                       "--steps", "100000", "--log-every", "1", "--eval-every", "100000",
                       "--checkpoint-every", "100000")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    first = launcher.stderr.readline()  # "... process 0 pid N, process 1 pid M"
    pids = [int(part.split()[-1]) for part in first.strip().split("; ")[1].split(", ")]
    while "step 5/" not in launcher.stdout.readline():
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
    os.kill(pids[1], signal.SIGTERM)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 75, err[-3000:]
    stopped = [line for line in err.splitlines() if "stopped by" in line]
    assert len(stopped) == 2, err[-3000:]
    steps = {line.split("after saving step ")[1].split(";")[0] for line in stopped}
    assert len(steps) == 1, stopped
    assert any("a signal to another process" in line for line in stopped), stopped
    assert checkpoint.latest_checkpoint_step(run_dir) == int(steps.pop())


@pytest.mark.slow
def test_a_signal_to_one_process_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGTERM to process 1 alone of a 2-process pre-training: both processes save the same
    step and exit 75; the same command with --resume then ends bit-identical (every leaf equal,
    not just close) to the run never interrupted on the same 2 processes."""
    steps = ["--steps", "60", "--log-every", "1", "--eval-every", "30",
             "--checkpoint-every", "20"]
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    command = launched(2, 1, "pretrain", "--run-dir", str(cut), *TINY_PRETRAIN, *steps)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    started = next(line for line in launcher.stderr if "process 1 pid" in line)
    while "step 5/" not in launcher.stdout.readline():
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
    os.kill(int(started.split("process 1 pid ")[1].split()[0]), signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 75, err[-3000:]
    stopped = {line.split("after saving step ")[1].split(";")[0]
               for line in err.splitlines() if "stopped by" in line}
    assert len(stopped) == 1, err[-3000:]
    saved = checkpoint.latest_checkpoint_step(cut)
    assert saved == int(stopped.pop()) and 5 <= saved < 60

    assert f"resumed {cut} at step {saved}" in run(command + ["--resume"]).stdout
    run(launched(2, 1, "pretrain", "--run-dir", str(straight), *TINY_PRETRAIN, *steps))
    (step_cut, resumed), (step_straight, uninterrupted) = (final_checkpoint(cut),
                                                            final_checkpoint(straight))
    assert step_cut == step_straight == 60 and resumed.keys() == uninterrupted.keys()
    for key in resumed:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=str(key))
