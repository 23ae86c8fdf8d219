"""Does probe 3's model follow edges only at the positions packed streams put episodes at?

For the first 4 episodes of one packed pre-training stream, prints each answer token right
(1) or wrong (0) under greedy teacher forcing: in the stream (episode attention scope), the
episode alone at its stream positions, and the episode alone at positions from 0 (as
sampling runs it). Run from the repository root: python benchmarks/probes/path_star_offsets.py
"""
import jax, jax.numpy as jnp, numpy as np
from critkl.runs.models import load_pretrained
from critkl import supervised
from critkl.model import GPT
cfg, params = load_pretrained("runs/pathstar-mini-d2")
tokens, targets, episodes = supervised.streams_batch(jax.random.key(5), cfg, None)
model = GPT(cfg.model_config)
logits, _ = model.apply({"params": params}, tokens, segments=episodes)
pred = np.asarray(jnp.argmax(logits, -1))
t = np.asarray(tokens); e = np.asarray(episodes); g = np.asarray(targets)
# per stream 0: each episode alone at its own offset
b = 0
for k in range(4):
    idx = np.nonzero(e[b] == k)[0]; s, f = idx[0], idx[-1] + 1
    seg = t[b, s:f][None, :]
    lg, _ = model.apply({"params": params}, jnp.asarray(seg), positions=jnp.asarray(np.arange(s, f)[None, :]))
    p_alone = np.asarray(jnp.argmax(lg, -1))[0]
    lg0, _ = model.apply({"params": params}, jnp.asarray(seg))
    p_zero = np.asarray(jnp.argmax(lg0, -1))[0]
    tg = g[b, s + 1:f]
    right_stream = (pred[b, s:f - 1] == t[b, s + 1:f])[tg]
    right_alone = (p_alone[:-1] == t[b, s + 1:f])[tg]
    right_zero = (p_zero[:-1] == t[b, s + 1:f])[tg]
    print(k, s, right_stream.astype(int), right_alone.astype(int), right_zero.astype(int))
