"""Tests of critkl.analysis.causal: decision keys against the rendered text, the optimum formula."""

import math
from collections import defaultdict

import jax
import numpy as np
import pytest

from critkl.analysis import causal
from critkl.config import CausalMapConfig
from critkl.tasks import addition, decisions
from critkl.tasks.addition import Addition
from critkl.tasks.addition.tokenizer import decode, token_id

TASK = Addition(7, 0)  # decision keys are the same for every addition task


def _plain_keys(tokens, roles, prompt_length, length):
    """{position: key} of one episode, by reading it token by token (the reference)."""
    scratch = {addition.ROLE[name] for name in addition.SCRATCH_ROLES}
    found, counts, line, brackets, started = {}, defaultdict(int), 0, 0, False
    for t in range(prompt_length, length):
        role = int(roles[t])
        if tokens[t] == token_id("["):
            brackets += 1
        if role in scratch:
            if not started:
                started, line = True, 1
            name = addition.ROLE_NAMES[role]
            part = "abA"[min(brackets, 3) - 1] if name in ("operand", "partial_result") else ""
            group = (line, name, part)
            found[t] = group + (counts[group],)
            counts[group] += 1
        if tokens[t] == token_id("\n") and started:
            line, brackets = line + 1, 0
    return found


def test_decision_codes_match_a_plain_reading_on_random_problems():
    """The jnp keys equal a token-by-token Python reading, on 2,000 problems of 1-7 digits."""
    operands = addition.sample_pretraining(jax.random.key(3), 2000, 7, 7)
    episodes = addition.render(operands)
    keys = decisions.decision_keys(TASK, episodes)
    tokens, roles = np.asarray(episodes.tokens), np.asarray(episodes.role)
    for b in range(len(keys)):
        expected = _plain_keys(tokens[b], roles[b], int(episodes.prompt_length[b]),
                               int(episodes.length[b]))
        assert keys[b] == expected, b
    codes = np.asarray(addition.decision_codes(episodes))
    for b in (0, 1, 2):
        for t, key in keys[b].items():
            assert codes[b, t] == addition.key_code(key)


def test_at_keys_marks_exactly_the_positions_of_the_keys():
    episodes = addition.render(addition.sample_identical(jax.random.key(0), 50, 4, 4))
    chosen = ((2, "operand", "b", 6), (1, "operand", "a", 5))
    mask = np.asarray(decisions.at_keys(TASK, addition.decision_codes(episodes), chosen))
    for b, found in enumerate(decisions.decision_keys(TASK, episodes)):
        assert set(np.nonzero(mask[b])[0]) == {t for t, key in found.items() if key in chosen}
    assert not np.asarray(decisions.at_keys(TASK, addition.decision_codes(episodes), ())).any()
    with pytest.raises(ValueError, match="not a decision key"):
        addition.key_code((1, "prompt", "", 0))


def test_decision_keys_name_the_rendered_tokens():
    """Every key names the token a plain reading of the scratchpad text puts there."""
    operands = addition.operands_from_ints([(1284, 3671), (9999, 1)], 4)
    episodes = addition.render(operands)
    for b, found in enumerate(decisions.decision_keys(TASK, episodes)):
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
    keys = decisions.decision_keys(TASK, episodes)[0]
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
        CausalMapConfig(temperature=0.0)
    with pytest.raises(ValueError, match="forced_below"):
        CausalMapConfig(forced_below=1.5)


@pytest.mark.parametrize("flag, value, field", [("--temperature", "0", "--temperature"),
                                                ("--forced-below", "2", "--forced-below"),
                                                ("--problems", "0", "--problems"),
                                                ("--level", "2", "--level 2: allowed N=3"),
                                                ("--level", "9", "--level 9: episodes of"),
                                                ("--level", "25", "--level 25: addition task: n=3, extra=22 must satisfy")])
def test_critical_command_rejects_bad_settings(capsys, tmp_path, flag, value, field):
    from critkl import cli

    status = cli.main(["critical", "mini-n3", flag, value, "--out", str(tmp_path / "x")])
    assert status == cli.USAGE_ERROR
    assert field in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_kl_weight_at_any_beta_from_the_recorded_certainties():
    """The map records each problem's certainty at each decision: its weight at the map's
    beta and at another beta equal the mean of the paper's weight computed from the logits."""
    from critkl.model import GPT
    from critkl.runs.models import load_pretrained
    from critkl.weighting import prioritized_kl_weights

    pre_config, params = load_pretrained("mini-n3")
    config = pre_config.model_config
    settings = CausalMapConfig(problems=4, beta=150.0, certainty_temperature=2.0,
                               forced_below=1e-6)  # no decision forced: the weights only
    task = Addition(3)
    rows = causal.causal_map(params, config, task, settings)
    episodes = task.at_level(4).render(task.at_level(4).sample_level(
        jax.random.split(jax.random.key(settings.seed))[0], settings.problems, 4))
    logits, _ = GPT(config).apply({"params": params}, episodes.tokens)
    by_key = defaultdict(list)
    for b, found in enumerate(decisions.decision_keys(task.at_level(4), episodes)):
        for t, key in found.items():
            by_key[key].append((b, t))
    for beta in (150.0, 500.0, 10.0):
        weights = np.asarray(prioritized_kl_weights(logits, beta, 2.0))
        for row in rows:
            expected = np.mean([weights[b, t - 1] for b, t in by_key[tuple(row["key"])]])
            assert causal.kl_weight(row, beta, 150.0) == pytest.approx(expected, rel=1e-4,
                                                                       abs=1e-7)
            if beta == 150.0:
                assert row["kl_weight"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert len({round(causal.kl_weight(r, 10.0, 150.0), 3) for r in rows}) > 5


def test_map_at_the_pretrained_level():
    """level=n maps problems at n: its decisions are those of n-digit episodes (fewer than at
    n + 1, the default), each at the position the renderer puts it."""
    from critkl.runs.models import load_pretrained

    pre_config, params = load_pretrained("mini-n3")
    settings = CausalMapConfig(problems=2, forced_below=1e-6)
    at = {level: causal.causal_map(params, pre_config.model_config, Addition(3), settings,
                                   level=level) for level in (3, None)}
    keys = {level: {tuple(row["key"]) for row in rows} for level, rows in at.items()}
    assert len(keys[3]) < len(keys[None])
    episodes = Addition(3, 0).render(Addition(3, 0).sample_level(
        jax.random.split(jax.random.key(settings.seed))[0], 2, 3))
    found = decisions.decision_keys(Addition(3, 0), episodes)
    assert keys[3] == {key for positions in found for key in positions.values()}


def test_kl_weight_of_a_map_without_certainties():
    """An older map holds the weight at its own beta only; another beta is refused, naming it."""
    row = {"kl_weight": 0.25}
    assert causal.kl_weight(row, 150.0, 150.0) == 0.25
    with pytest.raises(ValueError, match="beta=150 only.*not at beta=500"):
        causal.kl_weight(row, 500.0, 150.0)


def test_costly_and_critical_keys_follow_the_rule_on_random_rows():
    """costly: forced, and forcing wrong loses at least half the sampled success; critical:
    costly and p(right) <= 0.9; counted by a plain reading of the rule on random rows."""
    rng = np.random.default_rng(5)
    rows = []
    for index in range(500):
        row = {"key": [index], "p_right": float(rng.choice([0.5, 0.9, 0.95, 0.999]))}
        if rng.random() < 0.8:  # forced
            right = float(rng.choice([0.0, 0.25, 0.5, 1.0]))
            row.update(success_right_sampled=right,
                       success_wrong_sampled=float(rng.choice([0.0, 0.125, 0.25, 0.5, 1.0])))
        rows.append(row)
    for row in rows:
        forced = "success_right_sampled" in row
        right, wrong = row.get("success_right_sampled"), row.get("success_wrong_sampled")
        row["critical"] = forced and right > 0 and wrong <= right / 2 and row["p_right"] <= 0.9
    expected_costly = [(row["key"][0],) for row in rows if "success_right_sampled" in row
                       and row["success_right_sampled"] > 0
                       and row["success_wrong_sampled"] <= row["success_right_sampled"] / 2]
    assert list(causal.costly_keys(rows)) == expected_costly
    assert all(causal.costly(row) and row["p_right"] <= 0.9 for row in rows if row["critical"])
    assert set(causal.critical_keys(rows)) < set(causal.costly_keys(rows))
    assert 0 < len(causal.critical_keys(rows)) < len(expected_costly)


def test_the_shipped_maps_keys_occur_and_an_edited_one_does_not():
    """`check_keys_occur` on mini-n3's committed map: its critical keys are found in 4+4-digit
    episodes; a key moved to line 99 is named as never occurring."""
    import json
    from pathlib import Path

    record = json.loads((Path(__file__).parents[1] / "results" / "critical-mini-n3"
                         / "critical.json").read_text())
    keys = causal.critical_keys(record["rows"])
    task = Addition(3, 1)
    causal.check_keys_occur(task, keys, 4)
    moved = (99,) + tuple(keys[0][1:])
    with pytest.raises(ValueError, match=r"never occurs in addition episodes of 4\+4 digits"):
        causal.check_keys_occur(task, [moved], 4)
