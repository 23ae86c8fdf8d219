"""Where mini-n7's greedy episodes first go wrong on 8+8-digit problems (identical lengths):
the scratch line, the list and the list index of the first wrong token, and a few examples.

Run from the repository root: python benchmarks/probes/first_errors_mini_n7.py > results/eval-mini-n7/first_errors.txt
"""

import collections

import jax
import numpy as np

from critkl import evaluation
from critkl.runs.models import load_pretrained

PROBLEMS, SHOWN = 200, 8

pre_config, params = load_pretrained("mini-n7")
task = pre_config.text_task.at_level(8)
vocabulary = task.vocabulary
newline = vocabulary.token_id("\n")
places, shown = collections.Counter(), 0
limit = min(task.episode_limit(), pre_config.model_config.context_length)
for result in evaluation.solve_in_batches(
        params, pre_config.model_config, task, lambda rng, b: task.sample_level(rng, b, 8),
        PROBLEMS, 100, jax.random.key(7), temperature=0.0, max_length=limit):
    position, erred = (np.asarray(x) for x in evaluation.first_error(result))
    reference = np.asarray(result.reference.tokens)
    generated = np.asarray(result.generation.tokens)
    for b in np.nonzero(erred)[0]:
        p = int(position[b])
        line_starts = [i + 1 for i in range(p) if reference[b, i] == newline]
        scratch_line = len(line_starts) - 3  # after "Input:", the problem, "Target:" lines
        before = vocabulary.decode(reference[b, line_starts[-1]:p])
        which = "b" if " + [" in before else "a"
        index = int(result.reference.list_index[b, p])
        places[(scratch_line, which, index)] += 1
        if shown < SHOWN:
            shown += 1
            print("reference:", vocabulary.decode(reference[b, line_starts[-1]:p + 6]))
            print("generated:", vocabulary.decode(generated[b, line_starts[-1]:p + 6]))
            print()
failures = sum(places.values())
print(f"{failures} of {PROBLEMS} episodes go wrong; first wrong token at "
      "(scratch line, operand list, list index):")
for (line, which, index), count in places.most_common():
    print(f"  line {line}, list {which}, index {index}: {count} ({100 * count / failures:.1f}%)")
