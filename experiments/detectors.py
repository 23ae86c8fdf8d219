"""Beyond the paper: which per-token signal finds the decisive tokens? Each signal of
`critkl.weighting` scored against the causal critical-token map of the model pre-trained up
to N (`critkl.analysis.detectors`): precision-recall curves and average precision on the
correct-prefix action tokens of sampled episodes at the task's RL level (N+1; path-star: N).
No RL. The causally critical decisions are selected by the reference's own uncertainty
(p(right) <= 0.9), so the signals are also scored against the costly decisions alone
(files *_costly.*), a selection that does not use it; every token's scores are kept
(detectors*_tokens.npz) so that the average precisions can be recomputed. A map with no causally critical decision (multiplication-mini-n3's) leaves nothing to
find: the signals are then scored against its costly decisions (`causal.costly_keys`:
forcing wrong loses half the success, whatever p(right)), and the files say so. Then, for
addition, the same for the constructed model of the mechanism test (one known fork;
`experiments.mechanism`), whose fork stage is trained (or reused) and its map measured first
(files *_constructed.*).

Run: `critkl experiment detectors --scale tiny|mini|paper [--task path-star|multiplication]`.
"""

from __future__ import annotations

import json

import jax

from critkl.analysis import causal, detectors
from critkl.infra.outputs import Output
from critkl.tasks import registry
from experiments import kl_comparison, mechanism
from experiments.models import LEVEL, pretrained_model

# Problems at the RL level, sampled episodes of each, at the RL temperature 1.
SETTINGS = {"tiny": dict(problems=4, samples=2), "mini": dict(problems=64, samples=4),
            "paper": dict(problems=256, samples=4)}


COSTLY_NOTE = ("The map has no causally critical decision, so average precision against it "
               "is undefined. The labels mark its costly decisions instead "
               "(`critkl.analysis.causal.costly_keys`): forced by the map (p(right) below its "
               "`forced_below`), and forcing wrong loses at least half the sampled success, "
               "whatever p(right).")


UNCERTAINTY_FREE_NOTE = (
    "The causally critical decisions are those forcing makes costly *and* the model is unsure "
    "of (p(right) <= 0.9, `causal.CRITICAL_P_RIGHT`): a selection that uses the reference's "
    "own uncertainty, which favours the uncertainty signals. Here the labels are the costly "
    "decisions alone (`causal.costly_keys`: forcing wrong loses at least half the sampled "
    "success, whatever p(right)), a selection that does not use it.")


def score(params, model_config, task, keys, plan: dict, output: Output, suffix: str,
          print_fn, target: str = "causally critical", note: str = "") -> list[dict]:
    """Score every signal on the model's sampled episodes against the keys, which `target`
    names (`note`, when given, opens the markdown); write detectors{suffix}.md, .json and
    .png."""
    print_fn(f"detectors: {plan['samples']} sampled episodes of each of {plan['problems']} "
             f"problems of {task.rl_level} {task.level_unit}, against {len(keys)} {target} "
             f"keys")
    ranked = detectors.score_tokens(params, model_config, task, keys, problems=plan["problems"],
                                    samples=plan["samples"], rng=jax.random.key(0))
    output.arrays(f"detectors{suffix}_tokens.npz", critical=ranked.critical,
                  **{f"confidence_{name}": values for name, values in ranked.confidence.items()})
    rows = detectors.table(ranked)
    text = (f"{note}\n\n" if note else "") + detectors.markdown(rows, ranked, target)
    output.markdown(f"detectors{suffix}.md", text)
    output.json(f"detectors{suffix}.json", {"task": task.name, "n": task.n,
                                            "level": task.rl_level,
                                            "target": target,
                                            "keys": [list(k) for k in keys], **plan,
                                            "tokens": len(ranked.critical),
                                            "critical_tokens": int(ranked.critical.sum()),
                                            "rows": rows})
    detectors.plot(ranked, output.folder / f"detectors{suffix}.png", target)
    print_fn(text)
    return rows


def run(scale: str, output: Output, work_dir, print_fn=print, task: str = "addition") -> dict:
    plan, n = SETTINGS[scale], LEVEL[task][scale]
    pre_config, params = pretrained_model(scale, n, work_dir, print_fn, task)
    keys = kl_comparison.causal_keys(scale, params, pre_config, output, print_fn)
    fallback = {}
    if not keys:
        rows = json.loads((output.folder / "critical.json").read_text())["rows"]
        keys, fallback = causal.costly_keys(rows), dict(target="costly", note=COSTLY_NOTE)
    results = {"rows": score(params, pre_config.model_config, pre_config.text_task, keys, plan,
                             output, "", print_fn, **fallback)}
    if not fallback:  # the causally critical keys are chosen by the model's own uncertainty
        rows = json.loads((output.folder / "critical.json").read_text())["rows"]
        results["costly"] = score(params, pre_config.model_config, pre_config.text_task,
                                  causal.costly_keys(rows), plan, output, "_costly", print_fn,
                                  target="costly", note=UNCERTAINTY_FREE_NOTE)
    if task == "addition" and scale in mechanism.SETTINGS:
        print_fn("\nthe constructed model of the mechanism test (one known fork)")
        pre_config, params, n, record = mechanism.forked_model_and_map(scale, work_dir, print_fn)
        output.json("critical_constructed.json", record)
        keys = causal.critical_keys(record["rows"])
        results["constructed"] = score(params, pre_config.model_config,
                                       registry.make(pre_config.task, n), keys, plan, output,
                                       "_constructed", print_fn)
    return results
