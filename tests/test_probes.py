"""The RL probes of benchmarks/probes run (on an untrained or barely trained tiny model, in
seconds) and print their tables with finite numbers."""

import math
import re

import pytest

from benchmarks.probes import critical_probabilities, gradient_balance, gradient_steps

PROBES = {
    "critical_probabilities": (critical_probabilities, ["--model", "tiny-untrained",
                                                        "--problems", "8"], 2 + 2 + 2 + 3),
    "gradient_balance": (gradient_balance, ["--model", "tiny-untrained", "--episodes", "4",
                                            "--adam-steps", "1"], 2 + 4),
    "gradient_steps": (gradient_steps, ["--steps", "2", "--episodes", "16", "--chunk", "8"],
                       2 + 6 + 2 + 3),
}


@pytest.mark.parametrize("name", PROBES)
def test_probe_prints_its_tables(name, capsys):
    module, argv, table_rows = PROBES[name]
    module.main(argv)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(rows) == table_rows
    cells = [cell.strip() for row in rows if "---" not in row for cell in row.strip("|").split("|")]
    numbers = [float(x) for cell in cells for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", cell)]
    assert numbers and all(math.isfinite(x) for x in numbers)
