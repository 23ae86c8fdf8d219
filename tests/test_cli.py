import subprocess
import sys

import pytest

from critkl import cli, reference


def run(*args):
    return subprocess.run([sys.executable, "-m", "critkl.cli", *args], capture_output=True, text=True)


def test_render_prints_the_episode(capsys):
    assert cli.main(["render", "128", "367"]) == 0
    assert capsys.readouterr().out == reference.episode_text(128, 367)


def test_render_of_long_operands(capsys):
    a, b = "9" * 20, "1"
    assert cli.main(["render", a, b]) == 0
    assert capsys.readouterr().out == reference.episode_text(int(a), int(b))


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
