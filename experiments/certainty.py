"""Table 1 and Figure 5: the pre-trained model is less certain at critical tokens.

For each pre-training level N: certainty statistics on correct (N+1)-digit episodes
(`critkl.analysis.report`), a plot of the certainty along a few episodes with
the critical tokens marked, and the episodes coloured by certainty (HTML, TensorBoard).

Run: `critkl experiment certainty --scale tiny|mini|paper`.
"""

from __future__ import annotations

from critkl.analysis.report import analyze_model, write
from critkl.infra.outputs import Output
from experiments.models import pretrained_model

# Pre-training levels N and the correct (N+1)-digit episodes of their statistics.
SETTINGS = {"tiny": dict(levels=(1,), episodes=8),
            "mini": dict(levels=(3,), episodes=50),
            "paper": dict(levels=(3, 5, 7), episodes=50)}


def run(scale: str, output: Output, work_dir, print_fn=print, levels=None,
        task: str = "addition") -> dict:
    """Table 1 and Figure 5 for the models of `task` pre-trained up to each of `levels`
    (default: the scale's levels of addition)."""
    settings, tables, pages = SETTINGS[scale], [], []
    for n in settings["levels"] if levels is None else levels:
        pre_config, params = pretrained_model(scale, n, work_dir, print_fn, task)
        tables.append(analyze_model(params, pre_config.model_config, pre_config.text_task,
                                    output, episodes=settings["episodes"], print_fn=print_fn,
                                    pages=pages))
    write(output, tables, pages, pre_config.text_task.vocabulary)
    return {"tables": tables}
