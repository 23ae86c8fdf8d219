"""Table 1 and Figure 5 for one pre-trained model, written to an output folder: certainty
statistics at critical tokens against the rest (`critkl.analysis.certainty.certainty_table`), the
certainty along a few episodes with the critical tokens marked (PNG), and those episodes
coloured by certainty (HTML page, TensorBoard text). Used by `critkl analyze` and the
certainty experiment."""

from __future__ import annotations

import jax
import numpy as np

from critkl import chunks
from critkl.analysis import certainty as token_stats
from critkl.infra.outputs import Curve, Output

SHOWN_EPISODES = 4


def analyze_model(params, model_config, task, output: Output, *, episodes: int, print_fn=print,
                  shown: int = SHOWN_EPISODES, pages: list | None = None,
                  terminal: bool = False) -> dict:
    """Table 1 statistics of one model pre-trained on `task` up to level n = task.n, a plot of its certainty
    along `shown` episodes, and those episodes coloured (TensorBoard text; appended to
    `pages` for an HTML page; the first printed in terminal colours if `terminal`).
    Returns the statistics."""
    n = task.n
    rng = jax.random.key(n)
    table = token_stats.certainty_table(params, model_config, task, rng, episodes=episodes)
    s = table["structural"]
    print_fn(f"N={n}: dJ at critical tokens {s['critical']['mean']:+.4f}, at other tokens "
             f"{s['non_critical']['mean']:+.4f} (mean over {s['critical']['count']} episodes)")

    task = task.at_level(n + 1)
    rendered = chunks.render(task, task.sample_rl(jax.random.fold_in(rng, 1), shown))
    certainty = np.asarray(token_stats.token_certainty(params, model_config, rendered.tokens))
    critical = np.asarray(task.critical_positions(rendered))
    curves = []
    for i in range(shown):
        start, end = int(rendered.prompt_length[i]), int(rendered.length[i])
        tokens = np.asarray(rendered.tokens[i])
        if pages is not None:
            pages.append((f"N={n}, episode {i}", tokens, certainty[i], critical[i], start, end))
        output.tracker.text(n, f"episodes/{i}", token_stats.certainty_markdown_episode(
            task.vocabulary, tokens, certainty[i], start, end))
        curves.append(Curve(f"episode {i}", np.arange(start, end) - start,
                            certainty[i, start:end], style="-", color=f"C{i}"))
        marks = np.nonzero(critical[i, start:end])[0]
        curves.append(Curve(f"critical tokens, episode {i}", marks, certainty[i, start:end][marks],
                            style="X", color=f"C{i}", marker_size=9))
    output.plot(f"certainty_n{n}.png", curves, title=f"Certainty along episodes of {n + 1} "
                f"{task.level_unit} (model pre-trained up to {n})", xlabel="position in the target",
                ylabel="certainty J of the next-token distribution",
                ylim=(token_stats.colour_floor(np.concatenate([c.y for c in curves])) - 0.02, 1.01))
    if terminal:
        print_fn(token_stats.coloured_terminal(
            task.vocabulary, np.asarray(rendered.tokens[0]), certainty[0],
            int(rendered.prompt_length[0]), int(rendered.length[0])))
    return table


def write(output: Output, tables: list[dict], pages: list, vocabulary) -> None:
    """certainty.json, table1.md and episodes.html (`pages` in the task's `vocabulary`)."""
    output.json("certainty.json", tables)
    output.markdown("table1.md", token_stats.certainty_markdown(tables))
    output.html("episodes.html", token_stats.coloured_html(vocabulary, pages))
