"""The addition task's array programs (jit- and vmap-able): no Python per token or per
problem. The rest of critkl reaches them through `critkl.tasks.addition.Addition`, the
task interface's implementation; tests and the mechanism experiment use them directly.

- `problems`: operands as digit arrays; the pre-training, RL and identical-length samplers;
- `scratchpad`: rendering problems into episodes (tokens, roles), lengths, the structural
  critical tokens;
- `scoring`: success of generated episodes, the sampler's stop rule;
- `decisions`: the decision keys (line, role, list, ordinal) of scratch-line positions;
- `forks`: a constructed causal fork (a list closed one digit early) for the mechanism test.
"""

from critkl.env.decisions import (SCRATCH_ROLES, decision_codes, key_code, key_label,
                                  key_of_code)
from critkl.env.forks import render_closed_early
from critkl.env.problems import (MAX_SUPPORTED_DIGITS, Operands, check_digits, operands_from_ints,
                                 operands_to_ints, sample_identical, sample_pretraining,
                                 sample_rl)
from critkl.env.scoring import score, stop_rule
from critkl.env.scratchpad import (COMMA_ID, RL_LENGTH_MARGIN, ROLE, ROLE_NAMES,
                                   critical_positions, episode_limit, max_episode_length,
                                   prompt_width, render)

__all__ = [
    "SCRATCH_ROLES", "decision_codes", "key_code", "key_label", "key_of_code",
    "MAX_SUPPORTED_DIGITS", "Operands", "check_digits", "operands_from_ints", "operands_to_ints",
    "sample_identical", "sample_pretraining", "sample_rl",
    "score", "stop_rule",
    "COMMA_ID", "RL_LENGTH_MARGIN", "ROLE", "ROLE_NAMES", "critical_positions",
    "episode_limit", "max_episode_length", "prompt_width", "render",
    "render_closed_early",
]
