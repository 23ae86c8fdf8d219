"""benchmarks/device_check.py: its dry run end to end on this CPU (slow: 4-7 minutes here,
mostly compiling), and, in the default suite, its table and where its JSON goes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import device_check  # noqa: E402


def report(dry_run: bool) -> dict:
    """A report as main() writes it, with one row of each kind and one failed row."""
    return {
        "dry_run": dry_run, "matmul_size": 8192, "rl_episodes": 50,
        "peak_bf16_flops_per_s": 7.5e14,
        "tests": {"passed": True, "summary": "8 passed in 50.0s", "tests": ["a", "b"]},
        "pretraining": [
            {"what": "pretrain", "model": "mini (4x128)", "dtype": "float32", "batch": 64,
             "tokens": 512, "tokens_per_s": 2.5e6, "mfu": 0.123, "status": "ok"},
            {"what": "pretrain", "model": "paper (12x768)", "dtype": "bfloat16, cudnn attention",
             "batch": 32, "tokens": 512, "status": "error: NotImplementedError: head dim"}],
        "rl": [{"what": "rl", "runs": 8, "dtype": "float32", "iteration_episodes_per_s": 400.0,
                "sampler_episodes_per_s": 2000.0, "status": "ok"}],
    }


def test_table_rows_and_the_cpu_figures_beside_the_same_setting_only():
    lines = device_check.table(report(dry_run=False)).splitlines()
    assert lines[0].startswith("| check |") and len(lines) == 2 + 2 + 2 + 2
    assert "| pre-training mini (4x128), batch 64x512 | float32 | 2,500,000 tokens/s | 12.3% " \
           "| 12,263 |" in lines
    assert any("error: NotImplementedError" in line for line in lines)
    assert "| RL 8 runs iteration, 50 episodes per run | float32 | 400.0 episodes/s | | 35.2 |" \
        in lines
    assert "PASSED: 8 passed" in lines[2] and "750.00 TFLOP/s" in lines[3]
    dry = device_check.table(report(dry_run=True))
    assert "12,263" not in dry and "35.2" not in dry  # not the same setting


def test_the_json_goes_to_the_flag_or_to_out(monkeypatch, tmp_path):
    parser_args = lambda json_path: type("Args", (), {"json": json_path})  # noqa: E731
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(SystemExit, match="--json PATH, or set OUT"):
        device_check.output_path(parser_args(None))
    monkeypatch.setenv("OUT", str(tmp_path))
    assert device_check.output_path(parser_args(None)) == tmp_path / "device_check.json"
    assert device_check.output_path(parser_args("x.json")) == Path("x.json")


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "check.json"
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    environment.pop("OUT", None)
    result = subprocess.run([sys.executable, "benchmarks/device_check.py", "--dry-run",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                            env=environment, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written["dry_run"] and written["tests"]["passed"]
    rows = written["pretraining"] + written["rl"]
    assert [row["status"] for row in rows] == ["ok"] * 4
    assert {row["dtype"] for row in rows} == {"float32", "bfloat16"}
    assert all(0 < row["mfu"] for row in written["pretraining"])
    table = result.stdout.strip().split("\n\n")[-1].splitlines()
    assert table[0].startswith("| check |") and len(table) == 2 + 2 + 2 + 2 * 2
