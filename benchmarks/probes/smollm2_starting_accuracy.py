"""SmolLM2-135M-Instruct's starting accuracy on short-answer addition (critkl's
short-addition task): problems whose operands both have 1, 2 and 3 digits, greedy and sampled
at temperature 1, with what the failures wrote. Writes
results/smollm2-short-addition/starting_accuracy_shots{K}.json.

    taskset -c 0 python benchmarks/probes/smollm2_starting_accuracy.py [--problems 100]
        [--shots 0]
"""

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import jax
import numpy as np

from critkl import evaluation, statistics
from critkl.infra import provenance
from critkl.runs.models import load_pretrained
from critkl.tasks import addition

LEVELS = (1, 2, 3)
TEMPERATURES = (0.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=0, help="worked examples in the prompt")
    args = parser.parse_args()
    start = time.time()
    lm, params = load_pretrained("smollm2-135m")
    task = dataclasses.replace(lm.text_task.at_level(max(LEVELS)), shots=args.shots)
    vocabulary = task.vocabulary
    rows = []
    for level in LEVELS:
        problems = task.sample_level(jax.random.key(args.seed + level), args.problems, level)
        pairs = addition.operands_to_ints(problems)
        for temperature in TEMPERATURES:
            began = time.time()
            attempt = jax.device_get(evaluation.attempt(
                params, lm.model_config, task, problems, jax.random.key(args.seed),
                temperature=temperature, max_length=task.episode_limit()))
            outcome, generation = attempt.outcome, attempt.generation
            prompt = np.asarray(attempt.reference.prompt_length)
            answers = [vocabulary.decode(generation.tokens[i, prompt[i]:outcome.last[i] + 1])
                       for i in range(len(pairs))]
            # The sum anywhere in the answer (its last number): arithmetic apart from format.
            numbers = [re.findall(r"\d+", answer) for answer in answers]
            right_number = sum(bool(found) and int(found[-1]) == a + b
                               for found, (a, b) in zip(numbers, pairs))
            successes = int(outcome.success.sum())
            low, high = statistics.wilson_interval(successes, len(pairs))
            rows.append({
                "digits": level, "temperature": temperature, "problems": len(pairs),
                "success": successes / len(pairs), "low": low, "high": high,
                "terminated": float(outcome.terminated.mean()),
                "last_number_right": right_number / len(pairs),
                "seconds": round(time.time() - began, 1),
                "examples": [f"{a} + {b} -> {answer!r}"
                             for (a, b), answer in list(zip(pairs, answers))[:6]],
            })
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "examples"}),
                  flush=True)
    out = (Path(__file__).parents[2] / "results" / "smollm2-short-addition"
           / f"starting_accuracy_shots{args.shots}.json")
    command = f"taskset -c 0 python {Path(__file__).relative_to(Path.cwd())} " \
        f"--problems {args.problems} --seed {args.seed} --shots {args.shots}"
    out.write_text(json.dumps({"command": command, "commit": provenance.commit(),
                               "machine": provenance.machine(),
                               "seconds": round(time.time() - start),
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
