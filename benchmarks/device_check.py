"""A few minutes on one GPU: the accelerator-path tests, then pre-training and RL throughput
in float32 and bfloat16, printed as one table (last) and written as JSON.

    python benchmarks/device_check.py [--json PATH] [--dry-run] [--budget-s SECONDS]

(`benchmarks/device_check.sh` installs critkl first and runs this; BUILD.md, "Checking a GPU".)

1. Tests (pytest, in a child process): the whole-batch sampler against the CPU reference
   (tests/test_accelerator.py), a sweep split over runs against separate runs, the batched
   sweep's forward against the one-at-a-time one, and the whole-batch sampler against
   decoding in groups.
2. Pre-training steps (`model_throughput.training`: forward, backward, AdamW on packed
   streams of 512 tokens) of the mini model and of the paper's width (2 layers of 768, the row
   this project's CPU has; and the whole 12-layer paper model) in float32 and bfloat16, the
   paper model also with cuDNN's fused attention: tokens/s and model FLOPs utilisation (MFU)
   against a bfloat16 matmul measured in the same run.
3. RL iterations (`rl_throughput.measure`: from mini-n3, 50 episodes per collect, as the CPU
   table of docs/throughput.md): episodes/s of one run and of a vmapped sweep of 8, in
   float32 and bfloat16, each iteration and its sampler alone.

Each figure stands beside the same one on this project's 2-core CPU where there is one
(docs/throughput.md). A row that fails is recorded with its error and the check goes on; rows
not started within --budget-s are skipped. --dry-run: the tiny model (random parameters), a
few steps and episodes, every stage (RL: one run in float32, a sweep of 2 in bfloat16), on
any machine (tests/test_device_check.py runs it on the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
import model_throughput  # noqa: E402  (the benchmarks beside this file)
import rl_throughput  # noqa: E402

from critkl.config import PretrainConfig, model_preset  # noqa: E402
from critkl.infra import provenance  # noqa: E402
from critkl.model import init_params  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The accelerator-path tests: on a GPU each runs the accelerator layout on the GPU.
TESTS = ("tests/test_accelerator.py",
         "tests/test_finetune.py::test_vmapped_sweep_equals_separate_runs",
         "tests/test_rl.py::test_forward_by_width_equals_the_full_forward_where_episodes_are",
         "tests/test_sampling.py::test_decoding_in_groups_writes_the_same_sequences")
DRY_RUN_TESTS = TESTS[:1]
# This project's 2-core CPU, float32 (docs/throughput.md: the model table at 408eb44, the RL
# table at c30da33, two cores as the commands run).
CPU_FIGURES = {
    ("pretrain", "mini (4x128)", "float32"): 12263,
    ("pretrain", "paper width (2x768)", "float32"): 1738,
    ("rl", "1 run iteration", "float32"): 22.7,
    ("rl", "1 run sampler", "float32"): 67.4,
    ("rl", "8 runs iteration", "float32"): 35.2,
    ("rl", "8 runs sampler", "float32"): 130.8,
}


@dataclasses.dataclass
class Plan:
    """What to measure: pre-training (name, ModelConfig, batch), RL (pretrained, episodes,
    minibatches, iterations), the matmul size and the repeats of each timing."""

    pretraining: list
    rl_pretrained: tuple | None  # None: the shipped mini-n3
    rl_episodes: int
    rl_minibatches: int
    rl_iterations: int
    rl: list  # (dtype, runs) of each RL row
    matmul_size: int
    repeats: int
    tests: tuple[str, ...]


def plan_for(dry_run: bool, gpu: bool) -> Plan:
    dtypes = ("float32", "bfloat16")
    if dry_run:
        tiny = model_preset("tiny")
        pretrained = (PretrainConfig(model="tiny", max_digits=1, eval_extra_digits=1),
                      init_params(jax.random.key(0), tiny))
        return Plan([("tiny", dataclasses.replace(tiny, dtype=d), 8) for d in dtypes],
                    pretrained, rl_episodes=4, rl_minibatches=2, rl_iterations=1,
                    rl=[("float32", 1), ("bfloat16", 2)], matmul_size=256, repeats=1,
                    tests=DRY_RUN_TESTS)
    mini = model_preset("mini")
    width = dataclasses.replace(model_preset("paper"), num_layers=2, context_length=512)
    paper = dataclasses.replace(model_preset("paper"), context_length=512)
    rows = [(name, dataclasses.replace(config, dtype=d), batch) for name, config, batch in (
        ("mini (4x128)", mini, 64), ("paper width (2x768)", width, 32),
        ("paper (12x768)", paper, 32)) for d in dtypes]
    if gpu:
        rows.append(("paper (12x768)", dataclasses.replace(paper, dtype="bfloat16",
                                                           attention="cudnn"), 32))
    return Plan(rows, None, rl_episodes=50, rl_minibatches=5, rl_iterations=2,
                rl=[(dtype, runs) for dtype in dtypes for runs in (1, 8)], matmul_size=8192,
                repeats=3, tests=TESTS)


def run_tests(tests: tuple[str, ...]) -> dict:
    """pytest on `tests` in a child process, float32 products in full float32 (a GPU's default
    is TF32): passed, its summary line and seconds."""
    start = time.perf_counter()
    environment = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *tests], cwd=ROOT, capture_output=True, text=True, env=environment)
    lines = result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]]
    if result.returncode:
        print(result.stdout[-6000:], result.stderr[-2000:], sep="\n", flush=True)
    return {"passed": result.returncode == 0, "summary": lines[-1],
            "seconds": round(time.perf_counter() - start, 1), "tests": list(tests)}


def guarded(rows: list, deadline: float, fields: dict, measure) -> None:
    """Append `fields` and what measure() returns, its error, or "skipped" past the deadline."""
    row = dict(fields)
    if time.monotonic() > deadline:
        row["status"] = "skipped (time budget)"
    else:
        start = time.perf_counter()
        try:
            row.update(measure())
            row["status"] = "ok"
        except Exception as error:  # one failing row must not cost the others
            traceback.print_exc()
            row["status"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        row["seconds"] = round(time.perf_counter() - start, 1)
    rows.append(row)
    print(json.dumps(row), flush=True)


def pretraining_rows(plan: Plan, peak: float, deadline: float) -> list[dict]:
    rows = []
    for name, config, batch in plan.pretraining:
        def measure(config=config, batch=batch):
            tokens, flops = model_throughput.training(config, batch, plan.repeats)
            return {"tokens_per_s": tokens, "model_flops_per_s": flops, "mfu": flops / peak}

        setting = config.dtype + (f", {config.attention} attention"
                                  if config.attention != "critkl" else "")
        guarded(rows, deadline, {"what": "pretrain", "model": name, "dtype": setting,
                                 "batch": batch, "tokens": config.context_length}, measure)
    return rows


def rl_rows(plan: Plan, deadline: float) -> list[dict]:
    rows = []
    for dtype, runs in plan.rl:
        def measure(runs=runs, dtype=dtype):
            figures = rl_throughput.measure(runs, plan.rl_iterations, plan.rl_pretrained,
                                            plan.rl_episodes, plan.rl_minibatches, dtype)
            return {f"{part}_episodes_per_s": row["episodes"] / row["seconds"]
                    for part, row in figures.items()}

        guarded(rows, deadline, {"what": "rl", "runs": runs, "dtype": dtype}, measure)
    return rows


def table(report: dict) -> str:
    """The one table: every figure, beside this project's CPU where it has one."""
    lines = ["| check | setting | on this device | MFU (bf16 matmul) | project's 2-core CPU |",
             "|---|---|---|---|---|"]
    tests = report["tests"]
    lines.append(f"| accelerator-path tests | {len(tests['tests'])} test files or tests | "
                 f"{'PASSED' if tests['passed'] else 'FAILED'}: {tests['summary']} | | |")
    lines.append(f"| matmul {report['matmul_size']}^3 | bfloat16 | "
                 f"{report['peak_bf16_flops_per_s'] / 1e12:.2f} TFLOP/s | | |")

    def cpu(kind, name, dtype) -> str:  # the same setting only: none in a dry run
        figure = None if report["dry_run"] else CPU_FIGURES.get((kind, name, dtype))
        return "" if figure is None else f"{figure:,}"

    for row in report["pretraining"]:
        what = f"pre-training {row['model']}, batch {row['batch']}x{row['tokens']}"
        if row["status"] != "ok":
            lines.append(f"| {what} | {row['dtype']} | {row['status']} | | |")
            continue
        lines.append(f"| {what} | {row['dtype']} | {row['tokens_per_s']:,.0f} tokens/s | "
                     f"{row['mfu']:.1%} | {cpu('pretrain', row['model'], row['dtype'])} |")
    for row in report["rl"]:
        for part in ("iteration", "sampler"):
            name = f"{row['runs']} run{'s' if row['runs'] > 1 else ''} {part}"
            what = f"RL {name}, {report['rl_episodes']} episodes per run"
            value = (f"{row[part + '_episodes_per_s']:,.1f} episodes/s"
                     if row["status"] == "ok" else row["status"])
            lines.append(f"| {what} | {row['dtype']} | {value} | | "
                         f"{cpu('rl', name, row['dtype'])} |")
    return "\n".join(lines)


def output_path(args) -> Path:
    if args.json:
        return Path(args.json)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "device_check.json"
    raise SystemExit("device_check: give --json PATH, or set OUT to a folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="where the JSON goes (default: $OUT/device_check.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny model, a few steps: every stage in a minute, on any machine")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="measurements not started this many seconds after the start are "
                        "skipped (default 360: within 8 minutes on an H100 if the last row "
                        "started takes at most 2)")
    args = parser.parse_args(argv)
    out = output_path(args)
    deadline = time.monotonic() + args.budget_s
    device = jax.devices()[0]
    plan = plan_for(args.dry_run, device.platform == "gpu")
    print(f"device check on {jax.device_count()} x {device.device_kind} ({device.platform}), "
          f"jax {jax.__version__}{', dry run' if args.dry_run else ''}", flush=True)
    report = {"device": device.device_kind, "platform": device.platform,
              "devices": jax.device_count(), "jax": jax.__version__,
              "commit": provenance.commit(), "dry_run": args.dry_run,
              "matmul_size": plan.matmul_size, "rl_episodes": plan.rl_episodes,
              "tests": run_tests(plan.tests)}
    print(f"tests: {report['tests']['summary']}", flush=True)
    report["peak_bf16_flops_per_s"] = model_throughput.matmul_flops_per_second(
        plan.matmul_size, plan.repeats + 2, jnp.bfloat16)
    report["pretraining"] = pretraining_rows(plan, report["peak_bf16_flops_per_s"], deadline)
    report["rl"] = rl_rows(plan, deadline)
    report["cpu_figures_source"] = ("docs/throughput.md: model table at 408eb44, RL table at "
                                    "c30da33, this project's 2-core CPU, float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}\n")
    print(table(report), flush=True)
    failed = not report["tests"]["passed"] or any(
        row["status"].startswith("error") for row in report["pretraining"] + report["rl"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
