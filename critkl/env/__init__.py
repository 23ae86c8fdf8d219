"""The addition environment as pure jnp functions (jit- and vmap-able): no Python per token
or per problem. `from critkl import env`, then `env.sample_rl`, `env.render`, `env.score`.

- `problems`: the task's parameters (`Task`); operands as digit arrays; the pre-training, RL
  and identical-length samplers;
- `scratchpad`: rendering problems into episodes (tokens, roles), lengths, the structural
  critical tokens, packing into pre-training streams;
- `scoring`: success of generated episodes, the RL reward, the sampler's stop rule;
- `decisions`: the decision keys (line, role, list, ordinal) of scratch-line positions;
- `forks`: a constructed causal fork (a list closed one digit early) for the mechanism test.
"""

from critkl.env.decisions import (SCRATCH_ROLES, at_keys, causal_critical_mask,
                                  correct_prefix, decision_codes, decision_keys, key_code,
                                  key_label)
from critkl.env.forks import render_closed_early
from critkl.env.problems import (MAX_SUPPORTED_DIGITS, Operands, Task, operands_from_ints,
                                 operands_to_ints, sample_identical, sample_pretraining,
                                 sample_rl)
from critkl.env.scoring import Outcome, score, stop_rule, terminal_reward
from critkl.env.scratchpad import (COMMA_ID, RL_LENGTH_MARGIN, ROLE, ROLE_NAMES, Episodes,
                                   critical_positions, episode_limit, max_episode_length, pack,
                                   prompt_width, render, span_mask)

__all__ = [
    "SCRATCH_ROLES", "at_keys", "causal_critical_mask", "correct_prefix", "decision_codes",
    "decision_keys", "key_code", "key_label",
    "MAX_SUPPORTED_DIGITS", "Operands", "Task", "operands_from_ints", "operands_to_ints",
    "sample_identical", "sample_pretraining", "sample_rl",
    "Outcome", "score", "stop_rule", "terminal_reward",
    "COMMA_ID", "RL_LENGTH_MARGIN", "ROLE", "ROLE_NAMES", "Episodes", "critical_positions",
    "episode_limit", "max_episode_length", "pack", "prompt_width", "render", "span_mask",
    "render_closed_early",
]
