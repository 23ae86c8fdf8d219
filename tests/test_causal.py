"""Tests of critkl.causal: decision keys against the rendered text, the optimum formula."""

import math

import numpy as np
import pytest

from critkl import addition, causal
from critkl.tokenizer import decode


def test_decision_keys_name_the_rendered_tokens():
    """Every key names the token a plain reading of the scratchpad text puts there."""
    operands = addition.operands_from_ints([(1284, 3671), (9999, 1)], 4)
    episodes = addition.render(operands)
    for b, found in enumerate(causal.decision_keys(episodes)):
        text = decode(np.asarray(episodes.tokens[b, :int(episodes.length[b])]).tolist())
        lines = text.split("<scratch>\n")[1].split("\n")
        start = text.index("<scratch>\n") + len("<scratch>\n")
        line_starts = np.cumsum([start] + [len(line) + 1 for line in lines])
        for t, (line, role, part, ordinal) in found.items():
            in_line = t - line_starts[line - 1]
            line_text = lines[line - 1]
            if role == "operand":
                # The ordinal-th token after the part's opening bracket.
                open_at = [i for i, c in enumerate(line_text) if c == "["]["ab".index(part)]
                assert in_line == open_at + 1 + ordinal, (line_text, part, ordinal)
            if role == "partial_result":
                assert part == "A" and line_text[in_line - 1 - ordinal] == "["
    keys = causal.decision_keys(episodes)[0]
    tokens = np.asarray(episodes.tokens[0])
    # Line 1 of 1284+3671: "[1,2,8,4] + [3,6,7,1] ...": the a-list's 7th token is "4" and
    # the b-list's 6th is ",".
    by_key = {key: decode([int(tokens[t])]) for t, key in keys.items()}
    assert by_key[(1, "operand", "a", 6)] == "4"
    assert by_key[(1, "operand", "b", 5)] == ","
    assert by_key[(2, "operand", "a", 5)] == "]"


def test_optimum_p_right_follows_the_tilted_reference():
    row = {"p_right": 0.69, "success_right_sampled": 0.36, "success_wrong_sampled": 0.005}
    q_gap = 2 * (0.36 - 0.005)
    for kl_coef, weight in ((5.0, 1.0), (5.0, 0.08)):
        tilt = math.exp(q_gap / (kl_coef * weight))
        expected = 0.69 * tilt / (0.69 * tilt + 0.31)
        assert causal.optimum_p_right(row, kl_coef, weight) == pytest.approx(expected)
    assert causal.optimum_p_right(row, 5.0, 0.0) == 1.0
    assert causal.optimum_p_right({"p_right": 0.5}, 5.0, 1.0) is None


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="temperature"):
        causal.Settings(temperature=0.0)
    with pytest.raises(ValueError, match="forced_below"):
        causal.Settings(forced_below=1.5)


@pytest.mark.parametrize("flag, value, field", [("--temperature", "0", "--temperature"),
                                                ("--forced-below", "2", "--forced-below"),
                                                ("--problems", "0", "--problems")])
def test_critical_command_rejects_bad_settings(capsys, tmp_path, flag, value, field):
    from critkl import cli

    status = cli.main(["critical", "mini-n3", flag, value, "--out", str(tmp_path / "x")])
    assert status == cli.USAGE_ERROR
    assert field in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
