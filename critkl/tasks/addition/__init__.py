"""The paper's task, multi-digit addition written as a scratchpad: its array programs (jit-
and vmap-able, no Python per token or per problem) and `Addition`, their implementation of
the task interface. The rest of critkl reaches addition through `Addition`; tests and the
mechanism experiment use the array programs directly.

- `tokenizer`: the character vocabulary of the scratchpad format (ids, encode, decode);
- `problems`: operands as digit arrays; the pre-training, RL and identical-length samplers;
- `scratchpad`: rendering problems into episodes (tokens, roles), lengths, the structural
  critical tokens;
- `scoring`: success of generated episodes, the sampler's stop rule;
- `decisions`: the decision keys (line, role, list, ordinal) of scratch-line positions;
- `forks`: a constructed causal fork (a list closed one digit early) for the mechanism test;
- `oracle`: the plain-Python reference of the format and its reward;
- `task`: `Addition`, the task's parameters routed to the array programs.
"""

from critkl.tasks.addition.decisions import (SCRATCH_ROLES, decision_codes, key_code, key_label,
                                             key_of_code)
from critkl.tasks.addition.forks import render_closed_early
from critkl.tasks.addition.problems import (MAX_SUPPORTED_DIGITS, Operands, check_digits,
                                            operands_from_ints, operands_to_ints,
                                            sample_identical, sample_pretraining, sample_rl)
from critkl.tasks.addition.scoring import score, stop_rule
from critkl.tasks.addition.scratchpad import (COMMA_ID, RL_LENGTH_MARGIN, ROLE, ROLE_NAMES,
                                              critical_positions, episode_limit,
                                              max_episode_length, prompt_width, render)
from critkl.tasks.addition.task import Addition

__all__ = [
    "SCRATCH_ROLES", "decision_codes", "key_code", "key_label", "key_of_code",
    "MAX_SUPPORTED_DIGITS", "Operands", "check_digits", "operands_from_ints", "operands_to_ints",
    "sample_identical", "sample_pretraining", "sample_rl",
    "score", "stop_rule",
    "COMMA_ID", "RL_LENGTH_MARGIN", "ROLE", "ROLE_NAMES", "critical_positions",
    "episode_limit", "max_episode_length", "prompt_width", "render",
    "render_closed_early",
    "Addition",
]
