"""Add each decision's per-problem certainties to a causal map made before they were recorded,
re-measuring the map's unforced part with its own settings; checks p(right) and the weight."""
import dataclasses, json, sys
import numpy as np
from critkl.analysis import causal
from critkl.config import CausalMapConfig
from critkl.runs.models import load_pretrained
from critkl.tasks import registry

path, model = sys.argv[1], sys.argv[2]
record = json.loads(open(path).read())
pre_config, params = load_pretrained(model)
settings = dataclasses.replace(CausalMapConfig(**record["settings"]), forced_below=1e-9)
rows = causal.causal_map(params, pre_config.model_config, registry.make(record["task"], record["n"]), settings)
fresh = {tuple(r["key"]): r for r in rows}
worst = 0.0
for row in record["rows"]:
    new = fresh[tuple(row["key"])]
    assert new["problems"] == row["problems"]
    worst = max(worst, abs(new["p_right"] - row["p_right"]), abs(new["kl_weight"] - row["kl_weight"]))
    row["certainties"] = new["certainties"]
print(f"{len(record['rows'])} rows; largest difference in p(right) or weight: {worst:.2e}")
assert worst < 1e-4
open(path, "w").write(json.dumps(record, indent=1) + "\n")
