"""The path-star graph task (Bachmann & Nagarajan, "The pitfalls of next-token prediction",
2024) as an implementation of the task interface: find the path from the centre of a star
graph to the leaf of one of its arms. Pure jnp: whole-batch array programs, no Python per
problem or per token (apart from `problems_from_text`, the CLI's host-side parser).

A problem is a star graph: a centre and `degree` arms, each arm a path of `level` edges
going out from the centre. Its nodes are distinct single letters drawn at random per
problem from `LABELS` (a-z then A-Z). Levels are the arm length: pre-training draws levels
min_level..n (default 1..n), RL exactly n + extra. Only arms of 3 edges or more hold an edge
lookup (a node between the first step and the goal), so a larger min_level gives
pre-training more of them per token.

The format, one character per token. The prompt lists every edge as two labels, parent
(nearer the centre) then child (child then parent with `child_first=1`), in a random order,
separated by commas, then a newline, the start (the centre) `>` the goal (the leaf of one
arm, chosen at random), and a newline. The answer is the path from start to goal, node by
node, then a newline (the terminator).
Degree 3, level 2, centre `q`, arms q-x-B, q-c-h, q-M-e, goal `h`:

    xB,qM,ch,qx,Me,qc\\n      <- prompt: the edges
    q>h\\n                    <- prompt: start > goal
    qch\\n                    <- answer: the path and its terminator

i.e. the episode "xB,qM,ch,qx,Me,qc\\nq>h\\nqch\\n" (prompt 3 * degree * level + 4 tokens,
answer level + 2). The first step away from the centre (`c`) is the one decisive token (a
teacher-forced model stays at chance, 1/degree, there); every later node of the path is the
only child of the one before, and the terminator follows the goal, a leaf.

Shapes: B = batch, M = max_level (static), N = 1 + degree * M node slots,
E = degree * M edge slots, L = max_episode_length().
"""

from __future__ import annotations

import dataclasses
import string
from typing import ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from critkl.tasks.base import EOS_ID, PAD_ID, Episodes, Outcome, TextTask, Vocabulary
from critkl.tasks.layout import INDEX_SHIFT, ROLE_SHIFT, lay_out

LABELS = string.ascii_lowercase + string.ascii_uppercase  # node labels: label i is id 2 + i
_VOCABULARY = Vocabulary(LABELS + ",>\n")
_LABEL_0 = _VOCABULARY.token_id("a")
_COMMA = _VOCABULARY.token_id(",")
_ARROW = _VOCABULARY.token_id(">")
_NEWLINE = _VOCABULARY.token_id("\n")
MIN_DEGREE = 2  # one arm has no decision to make

# Role of each position of an episode.
ROLE_NAMES = (
    "prompt",      # the edges, start and goal
    "format",      # the answer's terminating newline
    "start",       # the path's first node: the centre, copied from the prompt
    "first_step",  # the path's second node: the one decisive token
    "step",        # the path's nodes between the first step and the goal, each the only
                   # child of the one before (an edge lookup)
    "goal",        # the path's last node after the first step: the goal, also in the prompt
)
ROLE = {name: i for i, name in enumerate(ROLE_NAMES)}

# Decision keys: ("step", k) for the k-th node of the path (k = 0 the centre), code k; and
# ("end",) for the terminator, code max_supported_level + 1 (the same at every level).


class StarGraphs(NamedTuple):
    """A batch of path-star problems. Node slot 0 is the centre; slot 1 + a * M + j is the
    (j + 1)-th node of arm a (slots with j >= level are unused, but labelled too, so that
    every row of `labels` is distinct labels). Edge slot e = a * M + j leads to node slot
    1 + e from its parent (slot 0 when j = 0, else slot e)."""

    labels: jax.Array      # [B, N] int32 index into LABELS of each node slot, distinct per row
    level: jax.Array       # [B] int32 edges per arm, in 1..M
    edge_order: jax.Array  # [B, E] int32 a permutation of the edge slots: the prompt lists the
                           # present ones (j < level) in this order
    goal_arm: jax.Array    # [B] int32 the arm whose leaf is the goal, in 0..degree-1


@dataclasses.dataclass(frozen=True)
class PathStar(TextTask):
    """Path-star graphs with `degree` arms: pre-training on arm lengths min_level..n, RL on
    n + extra."""

    name: ClassVar[str] = "path-star"
    vocabulary: ClassVar[Vocabulary] = _VOCABULARY
    role_names: ClassVar[tuple[str, ...]] = ROLE_NAMES
    # The longest arm the label pool allows at the smallest degree: 1 + 2 * 25 <= 52 nodes.
    max_supported_level: ClassVar[int] = (len(LABELS) - 1) // MIN_DEGREE
    level_unit: ClassVar[str] = "edges per arm"
    # RL at the pre-trained level: the first step away from the centre, the one decisive
    # token, is at chance there already, and a model trained with each episode alone has
    # positions past n's episodes untrained.
    rl_extra: ClassVar[int] = 0

    degree: int = 3
    min_level: int = 1  # pre-training's shortest arm
    # 1: each edge written child then parent. Following an edge from node x is then "the
    # token before the x that ends an edge" (x matched by its own token), instead of "the
    # token after the x that starts an edge" (x matched through the token before each one).
    child_first: int = 0

    def __post_init__(self):
        super().__post_init__()  # n >= 1, extra >= 0, n + extra <= max_supported_level
        me = (f"PathStar(n={self.n}, extra={self.extra}, degree={self.degree}, "
              f"min_level={self.min_level}, child_first={self.child_first})")
        for name in ("degree", "min_level", "child_first"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{me}: {name}={value!r} must be an integer")
        if self.child_first not in (0, 1):
            raise ValueError(f"{me}: child_first={self.child_first} is not supported: allowed "
                             "0 (parent then child) or 1 (child then parent)")
        if not 1 <= self.min_level <= self.n:
            raise ValueError(f"{me}: min_level={self.min_level} is not supported: allowed "
                             f"1..n={self.n}")
        most = (len(LABELS) - 1) // self.max_level
        if not MIN_DEGREE <= self.degree <= most:
            raise ValueError(
                f"{me}: degree={self.degree} is not supported: allowed {MIN_DEGREE}..{most} "
                f"(1 + degree * (n + extra) nodes must fit the {len(LABELS)} labels)")

    # ------------------------------------------------------------ sizes
    @property
    def nodes(self) -> int:
        """N: node slots of a problem, 1 + degree * max_level."""
        return 1 + self.degree * self.max_level

    def prompt_width(self) -> int:
        return 3 * self.degree * self.max_level + 4

    def max_episode_length(self) -> int:
        return self.prompt_width() + self.max_level + 2

    def shortest_episode_length(self) -> int:
        """An episode of level 1: 3 * degree + 4 prompt tokens, 3 answer tokens."""
        return 3 * self.degree + 7

    # ------------------------------------------------------------ problems
    def _sample(self, rng: jax.Array, level: jax.Array) -> StarGraphs:
        label_rng, order_rng, goal_rng = jax.random.split(rng, 3)
        batch, edges = level.shape[0], self.degree * self.max_level
        labels = jax.random.permutation(
            label_rng, jnp.broadcast_to(jnp.arange(len(LABELS), dtype=jnp.int32),
                                        (batch, len(LABELS))), axis=1, independent=True)
        edge_order = jax.random.permutation(
            order_rng, jnp.broadcast_to(jnp.arange(edges, dtype=jnp.int32), (batch, edges)),
            axis=1, independent=True)
        goal_arm = jax.random.randint(goal_rng, (batch,), 0, self.degree, jnp.int32)
        return StarGraphs(labels[:, :self.nodes], level.astype(jnp.int32), edge_order, goal_arm)

    def sample_pretraining(self, rng: jax.Array, batch: int) -> StarGraphs:
        """Arm lengths uniform in min_level..n."""
        level_rng, rng = jax.random.split(rng)
        return self._sample(rng, jax.random.randint(level_rng, (batch,), self.min_level,
                                                    self.n + 1, jnp.int32))

    def sample_rl(self, rng: jax.Array, batch: int) -> StarGraphs:
        """Arm length exactly n + extra."""
        return self._sample(rng, jnp.full((batch,), self.max_level, jnp.int32))

    def sample_level(self, rng: jax.Array, batch: int, level: int) -> StarGraphs:
        """Arm length exactly `level`, in 1..max_level."""
        if not 1 <= level <= self.max_level:
            raise ValueError(f"level={level} is not supported: allowed 1..{self.max_level} "
                             "(n + extra)")
        return self._sample(rng, jnp.full((batch,), level, jnp.int32))

    def problems_from_text(self, rows: list[str]) -> StarGraphs:
        """Rows "EDGES START>GOAL", the prompt's two lines joined by a space, e.g.
        "xB,qM,ch,qx,Me,qc q>h": a star of `degree` arms of equal length (1..max_level)
        around START, edges written parent then child (child then parent when child_first),
        GOAL the leaf of one arm.
        Numpy arrays; ValueError naming the bad row."""
        problems = [self._problem_from_row(row) for row in rows]
        stack = lambda k: np.stack([p[k] for p in problems]).astype(np.int32)  # noqa: E731
        if not problems:
            m, e = self.nodes, self.degree * self.max_level
            return StarGraphs(np.zeros((0, m), np.int32), np.zeros(0, np.int32),
                              np.zeros((0, e), np.int32), np.zeros(0, np.int32))
        return StarGraphs(*(stack(k) for k in range(4)))

    def _problem_from_row(self, row: str):
        def bad(why):
            return ValueError(f"problem {row!r} is not a path-star problem of degree "
                              f"{self.degree} and arm length 1..{self.max_level}: {why} "
                              "(write EDGES START>GOAL, e.g. 'xB,qM,ch,qx,Me,qc q>h')")

        parts = row.split()
        if len(parts) != 2:
            raise bad("needs an edge list and START>GOAL separated by a space")
        edges, ends = parts[0].split(","), parts[1]
        if len(ends) != 3 or ends[1] != ">":
            raise bad(f"{ends!r} is not START>GOAL")
        start, goal = ends[0], ends[2]
        for label in "".join(edges) + start + goal:
            if label not in LABELS:
                raise bad(f"{label!r} is not a node label (allowed {LABELS})")
        children: dict[str, list[str]] = {}
        parent: dict[str, str] = {}
        edges = [edge[::-1] if self.child_first else edge for edge in edges]  # parent, child
        for edge in edges:
            if len(edge) != 2 or edge[0] == edge[1]:
                raise bad(f"edge {edge!r} is not two different labels")
            if edge[1] in parent or edge[1] == start:
                raise bad(f"node {edge[1]!r} has two parents")
            parent[edge[1]] = edge[0]
            children.setdefault(edge[0], []).append(edge[1])
        firsts = children.get(start, [])
        if len(firsts) != self.degree:
            raise bad(f"the start {start!r} has {len(firsts)} arms")
        arms = []
        for first in firsts:
            arm = [first]
            while arm[-1] in children and len(arm) <= len(edges):
                if len(children[arm[-1]]) != 1:
                    raise bad(f"node {arm[-1]!r} branches")
                arm.append(children[arm[-1]][0])
            arms.append(arm)
        level = len(arms[0])
        if any(len(arm) != level for arm in arms) or level * self.degree != len(edges):
            raise bad("the arms are not paths of equal length from the start")
        if not 1 <= level <= self.max_level:
            raise bad(f"arm length {level}")
        goal_arm = [a for a, arm in enumerate(arms) if arm[-1] == goal]
        if not goal_arm:
            raise bad(f"the goal {goal!r} is not the leaf of an arm")
        m = self.max_level
        slot = {start: 0}
        for a, arm in enumerate(arms):
            slot.update({node: 1 + a * m + j for j, node in enumerate(arm)})
        spare = iter([i for i, label in enumerate(LABELS) if label not in slot])
        labels = np.array([next(spare) for _ in range(self.nodes)])
        for node, s in slot.items():
            labels[s] = LABELS.index(node)
        shown = [slot[edge[1]] - 1 for edge in edges]
        order = shown + [e for e in range(self.degree * m) if e not in set(shown)]
        return labels, level, np.array(order), goal_arm[0]

    # ------------------------------------------------------------ episodes
    def render(self, problems: StarGraphs) -> Episodes:
        """Prompt and answer of every problem: Episodes [B, L]."""
        chex.assert_shape([problems.labels], (None, self.nodes))
        chex.assert_shape([problems.edge_order], (None, self.degree * self.max_level))
        return self._render_rows(problems)

    def _render_rows(self, problems: StarGraphs) -> Episodes:
        labels, level, edge_order, goal_arm = problems
        batch, m, degree = labels.shape[0], self.max_level, self.degree
        ids = _LABEL_0 + labels.astype(jnp.int32)
        column = lambda x: x.astype(jnp.int32)[:, None]  # noqa: E731  [B] -> [B, 1]
        # Edge slots e = a * m + j: pool entries ",PC" (parent, child; ",CP" when child_first),
        # all in the prompt role.
        depth = np.tile(np.arange(m), degree)                              # j of each edge slot
        child = np.arange(1, degree * m + 1)
        parent = np.where(depth == 0, 0, child - 1)
        leading, trailing = (child, parent) if self.child_first else (parent, child)
        edge_slots = jnp.stack([jnp.full((batch, degree * m), _COMMA, jnp.int32),
                                ids[:, leading], ids[:, trailing]], axis=-1).reshape(batch, -1)
        # The prompt's last line "\nS>G\n", prompt role.
        goal = jnp.take_along_axis(ids, column(1 + goal_arm * m + level - 1), axis=1)
        newline = jnp.full((batch, 1), _NEWLINE, jnp.int32)
        ends = jnp.concatenate([newline, ids[:, :1], jnp.full((batch, 1), _ARROW, jnp.int32),
                                goal, newline], axis=1)
        # The path: the centre, then arm goal_arm's nodes; roles start, first_step, step and
        # goal (the last node, from 2 edges on); list index k = the node's position along it.
        k = np.arange(m + 1)
        path_nodes = jnp.where(k[None, :] == 0, 0, 1 + column(goal_arm) * m + k[None, :] - 1)
        path_role = jnp.where((k[None, :] == column(level)) & (k[None, :] >= 2), ROLE["goal"],
                              np.where(k == 0, ROLE["start"],
                                       np.where(k == 1, ROLE["first_step"], ROLE["step"])))
        path = (jnp.take_along_axis(ids, path_nodes, axis=1)
                + ROLE_SHIFT * path_role + INDEX_SHIFT * (k + 1))
        end = jnp.full((batch, 1), _NEWLINE + ROLE_SHIFT * ROLE["format"], jnp.int32)
        pool = jnp.concatenate([edge_slots, ends, path, end], axis=1)
        # Pieces: the edges in prompt order (the first shown one without its comma), the last
        # prompt line, the path up to the goal, the terminator.
        shown = jnp.take_along_axis(jnp.asarray(depth)[None, :] < column(level),
                                    edge_order, axis=1)
        first = shown & (jnp.cumsum(shown, axis=1) == 1)
        edge_offsets = 3 * edge_order + first
        edge_counts = jnp.where(shown, 3 - first, 0)
        base = 3 * degree * m
        offsets = jnp.concatenate([edge_offsets, jnp.broadcast_to(
            jnp.array([base, base + 5, base + 5 + m + 1], jnp.int32), (batch, 3))], axis=1)
        counts = jnp.concatenate([edge_counts, jnp.full((batch, 1), 5, jnp.int32),
                                  column(level) + 1, jnp.ones((batch, 1), jnp.int32)], axis=1)
        tokens, role, index, length = lay_out(pool, offsets, counts, self.max_episode_length())
        prompt_length = 3 * degree * level + 4
        return Episodes(tokens, prompt_length.astype(jnp.int32), length.astype(jnp.int32), role,
                        index, (level + 2).astype(jnp.int32))

    # ------------------------------------------------------------ judging
    def score(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        """Judge tokens [B, T] (prompt then generation, any ids, any width T) against the
        problems' correct episodes. The generation (from `reference.prompt_length` on) ends at
        its first newline, PAD or EOS (terminated), else at the last position T - 1; it
        succeeds iff it ended at a newline and, that newline included, equals the reference
        answer. Never raises, never NaN. Reads neither roles nor list indices."""
        chex.assert_rank(tokens, 2)
        return self._score_rows(tokens, reference)

    def _score_rows(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        size = tokens.shape[1]
        tokens = tokens.astype(jnp.int32)
        position = jnp.arange(size)[None, :]
        start = reference.prompt_length.astype(jnp.int32)
        ends = ((tokens == _NEWLINE) | (tokens == PAD_ID) | (tokens == EOS_ID)) & (
            position >= start[:, None])
        end = jnp.min(jnp.where(ends, position, size), axis=1)
        terminated = end < size
        # The answer window: the reference's answer against the generation's first tokens.
        window = jnp.arange(self.max_level + 2)[None, :]
        at = start[:, None] + window
        expected = jnp.take_along_axis(
            reference.tokens, jnp.clip(at, 0, reference.tokens.shape[1] - 1), axis=1)
        found = jnp.take_along_axis(tokens, jnp.clip(at, 0, size - 1), axis=1)
        inside = window < reference.result_length[:, None]
        same = ((found == expected) & (at < size)) | ~inside
        success = terminated & (end == start + reference.result_length - 1) & same.all(axis=1)
        last = jnp.minimum(end, size - 1)
        return Outcome(success, terminated, last.astype(jnp.int32))

    def stop_rule(self, state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Ends at the first generated newline, PAD or EOS, as `score` does (the state is
        not needed and returned as it came)."""
        return state, (token == _NEWLINE) | (token == PAD_ID) | (token == EOS_ID)

    # ------------------------------------------------------------ critical tokens
    def critical_positions(self, episodes: Episodes) -> jax.Array:
        """The first step away from the centre, at every level: [B, L] bool."""
        return episodes.role == ROLE["first_step"]

    def critical_kinds(self, episodes: Episodes) -> dict[str, jax.Array]:
        return {"first_step": self.critical_positions(episodes)}

    def decision_codes(self, episodes: Episodes) -> jax.Array:
        """("step", k) at the path's k-th node (code k), ("end",) at the terminator; -1
        elsewhere. [B, L] int32."""
        position = jnp.arange(episodes.tokens.shape[1])[None, :]
        answer = (position >= episodes.prompt_length[:, None]) & (
            position < episodes.length[:, None])
        node = answer & (episodes.list_index >= 0)
        end = answer & (episodes.role == ROLE["format"])
        return jnp.where(node, episodes.list_index,
                         jnp.where(end, self._end_code, -1)).astype(jnp.int32)

    @property
    def _end_code(self) -> int:
        return self.max_supported_level + 1

    def key_code(self, key: tuple) -> int:
        key = tuple(key)
        if key == ("end",):
            return self._end_code
        if (len(key) == 2 and key[0] == "step" and isinstance(key[1], (int, np.integer))
                and not isinstance(key[1], bool) and 0 <= key[1] <= self.max_supported_level):
            return int(key[1])
        raise ValueError(f"not a decision key: {key!r} (allowed: ('step', k) with k in "
                         f"0..{self.max_supported_level}, or ('end',))")

    def key_of_code(self, code: int) -> tuple:
        if code == self._end_code:
            return ("end",)
        if 0 <= code <= self.max_supported_level:
            return ("step", int(code))
        raise ValueError(f"code {code} is not a decision code (allowed "
                         f"0..{self._end_code})")

    def key_label(self, key: tuple, token: str) -> str:
        """e.g. "path node 1 (first step) label", "path end '\\n'"."""
        key = tuple(key)
        kind = "label" if len(token) == 1 and token in LABELS else repr(token)
        if key == ("end",):
            return f"path end {kind}"
        k = key[1]
        what = {0: " (start)", 1: " (first step)"}.get(k, "")
        return f"path node {k}{what} {kind}"
