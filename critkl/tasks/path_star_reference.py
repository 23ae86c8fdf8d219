"""Plain-Python reference of the path-star task's format and its judge.

Independent of the jnp task in `critkl.tasks.path_star` (no shared code), so the tests can
compare the two byte for byte. A problem is its edge list in prompt order, its start and
its goal; the reference finds the path itself (walking back from the goal) and checks that
the graph is a star.

The episode of edges [("x", "B"), ("q", "M"), ("c", "h"), ("q", "x"), ("M", "e"), ("q", "c")],
start "q", goal "h":

    xB,qM,ch,qx,Me,qc
    q>h
    qch

(the prompt is the first two lines with their newlines; the answer the third line and its
newline). With child_first, each edge is written child then parent: "Bx,Mq,hc,xq,eM,cq".
"""

from __future__ import annotations

import dataclasses

NODE_LABELS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class Problem:
    edges: tuple[tuple[str, str], ...]  # (parent, child) pairs, in the prompt's order
    start: str
    goal: str


def prompt_text(problem: Problem, child_first: bool = False) -> str:
    """The part the model is given: the edges, then `start>goal`, each line ended by a newline."""
    edge_line = ",".join(child + parent if child_first else parent + child
                         for parent, child in problem.edges)
    return edge_line + "\n" + problem.start + ">" + problem.goal + "\n"


def path(problem: Problem) -> list[str]:
    """The nodes from the start to the goal, found by walking back from the goal."""
    parent_of = {child: parent for parent, child in problem.edges}
    nodes = [problem.goal]
    while nodes[-1] != problem.start:
        if nodes[-1] not in parent_of or len(nodes) > len(problem.edges):
            raise ValueError(f"no path from {problem.start!r} to {problem.goal!r}")
        nodes.append(parent_of[nodes[-1]])
    return nodes[::-1]


def answer_text(problem: Problem) -> str:
    """What the model must write: the path's labels, then a newline."""
    return "".join(path(problem)) + "\n"


def episode_text(problem: Problem, child_first: bool = False) -> str:
    return prompt_text(problem, child_first) + answer_text(problem)


def parse_prompt(text: str, child_first: bool = False) -> Problem:
    """The problem of a prompt text (`prompt_text`'s inverse)."""
    lines = text.split("\n")
    if len(lines) != 3 or lines[2] != "":
        raise ValueError(f"a prompt is two lines, each ended by a newline: {text!r}")
    edge_line, ends = lines[0], lines[1]
    if len(ends) != 3 or ends[1] != ">":
        raise ValueError(f"the second line must be start>goal: {ends!r}")
    edges = []
    for item in edge_line.split(","):
        if len(item) != 2:
            raise ValueError(f"an edge is two labels: {item!r}")
        edges.append((item[1], item[0]) if child_first else (item[0], item[1]))
    return Problem(tuple(edges), ends[0], ends[2])


def check_star(problem: Problem, degree: int, level: int) -> None:
    """Raise ValueError unless the problem is a star of `degree` arms of `level` edges,
    edges written outwards from the start, distinct labels, the goal a leaf, and the path
    from start to goal valid."""
    nodes = [problem.start] + [child for _, child in problem.edges]
    if len(set(nodes)) != len(nodes):
        raise ValueError("a node is the child of two edges, or the start is a child")
    if any(label not in NODE_LABELS for label in nodes):
        raise ValueError("a label is not a node label")
    if len(nodes) != 1 + degree * level:
        raise ValueError(f"{len(nodes)} nodes, want {1 + degree * level}")
    known = set(nodes)
    out_degree = {node: 0 for node in nodes}
    for parent, child in problem.edges:
        if parent not in known:
            raise ValueError(f"edge {parent}{child} starts at a node no edge reaches")
        out_degree[parent] += 1
    if out_degree[problem.start] != degree:
        raise ValueError(f"the start has {out_degree[problem.start]} arms, want {degree}")
    if any(count > 1 for node, count in out_degree.items() if node != problem.start):
        raise ValueError("an arm branches")
    # Every leaf is `level` edges from the start (walking back); with the counts above, the
    # graph is then `degree` disjoint paths of `level` edges from the start.
    leaves = [node for node, count in out_degree.items() if count == 0]
    if len(leaves) != degree:
        raise ValueError(f"{len(leaves)} leaves, want {degree}")
    for leaf in leaves:
        if len(path(Problem(problem.edges, problem.start, leaf))) != level + 1:
            raise ValueError(f"the arm to {leaf!r} is not {level} edges long")
    if problem.goal not in leaves:
        raise ValueError(f"the goal {problem.goal!r} is not a leaf")
    nodes_on_path = path(problem)
    edge_set = set(problem.edges)
    if (nodes_on_path[0] != problem.start or nodes_on_path[-1] != problem.goal
            or any((u, v) not in edge_set for u, v in zip(nodes_on_path, nodes_on_path[1:]))):
        raise ValueError("the path is not a walk along the edges from start to goal")


def judge(problem: Problem, generation: list) -> tuple[bool, bool, int | None]:
    """Judge a generation (what follows the prompt), a list of symbols: one character per
    vocabulary token, None for PAD or EOS, any other string for an id outside the vocabulary.

    Returns (success, terminated, end): the generation ends at its first newline or None
    (terminated, end = its index), else it runs to its last symbol (end None); it succeeds
    iff it ended at a newline and, that newline included, is exactly the answer.
    """
    answer = list(answer_text(problem))
    for i, symbol in enumerate(generation):
        if symbol is None or symbol == "\n":
            return symbol == "\n" and generation[:i + 1] == answer, True, i
    return False, False, None
