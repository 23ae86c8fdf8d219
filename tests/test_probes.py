"""The RL probes of benchmarks/probes run (on an untrained tiny model, in
seconds each once compiled) and print their tables with finite numbers. Research scripts,
not the library: slow tests (`pytest -m slow`)."""

import math
import re

import pytest

from benchmarks.probes import critical_probabilities, gradient_balance, gradient_steps

PROBES = {
    "critical_probabilities": (critical_probabilities, ["--model", "tiny-untrained",
                                                        "--problems", "8"], 2 + 2 + 2 + 3),
    "gradient_balance": (gradient_balance, ["--model", "tiny-untrained", "--episodes", "4",
                                            "--adam-steps", "1"], 2 + 4),
    "gradient_steps": (gradient_steps, ["--steps", "0", "--episodes", "8", "--chunk", "8"],
                       2 + 6 + 2 + 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", PROBES)
def test_probe_prints_its_tables(name, capsys):
    module, argv, table_rows = PROBES[name]
    module.main(argv)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert len(rows) == table_rows, out
    width = 0
    for row, following in zip(rows, rows[1:] + [""]):
        if following.startswith("|---"):  # a header: its table's number of columns
            width = following.count("|")
        assert row.count("|") == width, row
    assert not re.search(r"\b(nan|inf)\b", out, re.IGNORECASE), out
    numbers = [float(x) for row in rows if "---" not in row
               for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", row)]
    assert numbers and all(math.isfinite(x) for x in numbers)
