"""A pre-trained LM in critkl's commands: the one model interface (critkl.models), the
short-addition task in a real tokenizer's ids, RL through critkl.rl on a tiny random LLaMA, and
loading by name or Hugging Face folder.

References: the task's episodes and scores against the tokenizer's own encoding of the whole
chat text and a plain-Python scorer, on random problems (a tiny byte-level tokenizer always;
SmolLM2's when its file is installed); the model interface against each decoder's own
forward. The end-to-end `critkl finetune smollm2-135m` is a slow test.
"""

import dataclasses
import functools
import json
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, pre_tokenizers

from critkl import model as gpt, rl
from critkl.config import RLConfig, RLHyper, model_preset
from critkl.infra import checkpoint
from critkl.loss_config import LossConfig
from critkl.models import cache_for, init_params, llama, logits_from_hidden, module_for
from critkl.models import smollm2, tokenizer
from critkl.runs import models
from critkl.tasks import registry
from critkl.tasks.base import PAD_ID
from critkl.tasks.short_addition import EXAMPLES, QUESTION, ShortAddition

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as SmolLM2's
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@functools.cache
def tiny_tokenizer() -> tokenizer.Tokenizer:
    """A byte-level BPE without merges: the three ChatML specials, then one id per byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(list(SPECIALS) + sorted(alphabet))}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIALS])
    return tokenizer.Tokenizer(backend, bos_id=1, eos_id=2, pad_id=2, chat_template=CHATML)


@dataclasses.dataclass(frozen=True)
class TinyShortAddition(ShortAddition):
    """Short addition in the tiny tokenizer's 259 ids."""

    name = "short-addition-tiny"

    @classmethod
    def tokenizer(cls):
        return tiny_tokenizer()


@pytest.fixture
def tiny_task_registered(monkeypatch):
    monkeypatch.setitem(registry.TASKS, TinyShortAddition.name, TinyShortAddition)


def smollm2_tokenizer_or_skip():
    try:
        smollm2.gguf_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return smollm2.load_tokenizer()


# --- references -----------------------------------------------------------------------------


def reference_episode(tok, a: int, b: int, shots: int = 0) -> tuple[list[int], int]:
    """The tokenizer's own ids of the whole chat text (after `shots` worked examples) and
    answer, and the prompt's length."""
    messages = []
    for x, y in EXAMPLES[:shots]:
        messages += [{"role": "user", "content": QUESTION.format(a=x, b=y)},
                     {"role": "assistant", "content": str(x + y)}]
    chat = tok.render_chat(messages + [{"role": "user", "content": QUESTION.format(a=a, b=b)}])
    prompt = tok.encode(chat)
    return prompt + tok.encode(f"{a + b}<|im_end|>"), len(prompt)


def reference_score(tok, generated: list[int], a: int, b: int) -> tuple[bool, bool, int]:
    """(success, terminated, index of the last token within `generated`) in plain Python:
    the episode ends at its first <|im_end|> or padding id; it succeeds when what comes
    before is the sum's digits."""
    end = tok.encode("<|im_end|>")[0]
    stop = next((i for i, t in enumerate(generated) if t in (end, PAD_ID)), None)
    if stop is None:
        return False, False, len(generated) - 1
    answer = tok.encode(str(a + b))
    return generated[:stop] == answer and generated[stop] == end, True, stop


def random_generations(tok, a: int, b: int, width: int, rng: random.Random) -> list[int]:
    """A generation after the prompt, padded to `width` with PAD_ID: right, a wrong digit, a
    word before the number, no end, the end at once, an end of text, the sum then more text."""
    answer, end = tok.encode(str(a + b)), tok.encode("<|im_end|>")[0]
    wrong = list(answer)
    wrong[rng.randrange(len(wrong))] = tok.encode(str(rng.choice("0123456789")))[0]
    kind = rng.randrange(7)
    generated = [answer + [end], wrong + [end], tok.encode(" is ") + answer + [end],
                 answer * 6, [end], answer + [PAD_ID], answer + tok.encode(" ok") + [end]][kind]
    return (generated + [PAD_ID] * width)[:width]


def check_task_against_references(task: ShortAddition, tok, seed: int) -> None:
    rng = jax.random.key(seed)
    problems = jax.tree.map(lambda *x: jnp.concatenate(x), task.sample_pretraining(rng, 40),
                            task.sample_rl(jax.random.fold_in(rng, 1), 40))
    episodes = jax.device_get(task.render(problems))
    pairs = [tuple(map(int, pair)) for pair in zip(*_values(problems))]
    codes = np.asarray(task.decision_codes(episodes))
    width = task.episode_limit()
    python_rng = random.Random(seed)
    generations = []
    for row, (a, b) in enumerate(pairs):
        ids, prompt = reference_episode(tok, a, b, task.shots)
        length = int(episodes.length[row])
        assert episodes.tokens[row, :length].tolist() == ids, (a, b)
        assert (episodes.tokens[row, length:] == PAD_ID).all()
        assert (int(episodes.prompt_length[row]), length) == (prompt, len(ids))
        digits = len(str(a + b))
        assert codes[row].tolist() == ([-1] * prompt + list(range(digits - 1, -1, -1))
                                       + [task.max_supported_level + 1]
                                       + [-1] * (codes.shape[1] - length))
        generations.append(ids[:prompt] + random_generations(tok, a, b, width - prompt,
                                                             python_rng))
    outcome = jax.device_get(task.score(jnp.array(generations, jnp.int32), episodes))
    for row, (a, b) in enumerate(pairs):
        prompt = int(episodes.prompt_length[row])
        success, terminated, last = reference_score(tok, generations[row][prompt:], a, b)
        assert (bool(outcome.success[row]), bool(outcome.terminated[row]),
                int(outcome.last[row])) == (success, terminated, prompt + last), (a, b)
    assert 0 < outcome.success.mean() < 1  # both kinds were judged
    stopped = jax.vmap(lambda column: task.stop_rule(jnp.zeros(len(pairs), jnp.int32),
                                                     column)[1], in_axes=1, out_axes=1)(
        jnp.array(generations, jnp.int32))
    first_stop = np.argmax(np.asarray(stopped) & (np.arange(width) >= np.asarray(
        episodes.prompt_length)[:, None]), axis=1)
    terminated = np.asarray(outcome.terminated)
    np.testing.assert_array_equal(first_stop[terminated], np.asarray(outcome.last)[terminated])


def _values(problems):
    """Operand values of digit arrays (least significant first)."""
    powers = 10 ** np.arange(problems.a.shape[1])
    return np.asarray(problems.a) @ powers, np.asarray(problems.b) @ powers


# --- the task -------------------------------------------------------------------------------


@pytest.mark.parametrize("level,shots", [(1, 0), (3, 2)])
def test_tiny_tokenizer_episodes_and_scores_match_plain_python(level, shots):
    task = TinyShortAddition(level, shots=shots)
    check_task_against_references(task, tiny_tokenizer(), seed=level)
    assert task.vocabulary.size == 259
    episode = task.render(task.problems_from_text(["47+85"])).tokens[0]
    assert task.vocabulary.decode(episode) == tiny_tokenizer().decode(
        reference_episode(tiny_tokenizer(), 47, 85, shots)[0])
    assert task.vocabulary.decode(episode).endswith(
        "What is 47 + 85? Answer with the number only.<|im_end|>\n<|im_start|>assistant\n"
        "132<|im_end|>")
    with pytest.raises(ValueError, match="shots=4"):
        TinyShortAddition(level, shots=4)


def test_smollm2_tokenizer_episodes_and_scores_match_plain_python():
    tok = smollm2_tokenizer_or_skip()
    task = ShortAddition(2)
    assert task.vocabulary.size == 49152 and task.pieces.digits == tuple(range(32, 42))
    check_task_against_references(task, tok, seed=0)
    check_task_against_references(dataclasses.replace(task.at_level(9), shots=1), tok, seed=9)


def test_a_tokenizer_that_merges_digits_is_refused():
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={t: i for i, t in enumerate(list(SPECIALS) + sorted(
            pre_tokenizers.ByteLevel.alphabet()) + ["12"])}, merges=[("1", "2")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIALS])
    merging = tokenizer.Tokenizer(backend, 1, 2, 2, CHATML)
    from critkl.tasks.short_addition import chat_pieces

    with pytest.raises(ValueError, match="splits digits"):
        chat_pieces(merging)


# --- the model interface --------------------------------------------------------------------

TINY_LLAMA = llama.LlamaConfig(vocab_size=259, num_layers=2, d_model=32, num_heads=4,
                               num_kv_heads=2, head_dim=8, d_ff=64, context_length=128,
                               rope_theta=1e4)


@pytest.mark.parametrize("config", [model_preset("tiny"), TINY_LLAMA,
                                    dataclasses.replace(TINY_LLAMA, tie_embeddings=False)],
                         ids=["gpt", "llama-tied", "llama-untied"])
def test_the_interface_gives_each_config_its_decoder(config):
    expected = llama.Llama if isinstance(config, llama.LlamaConfig) else gpt.GPT
    assert type(module_for(config)) is expected
    heads = getattr(config, "num_kv_heads", config.num_heads)
    cache = cache_for(config, 3, 16)
    assert cache.keys[0].shape == (3, heads, 16, config.head_dim)
    assert len(cache.keys) == config.num_layers
    params = init_params(jax.random.key(0), config)
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, config.vocab_size)
    logits, hidden = expected(config).apply({"params": params}, tokens)
    np.testing.assert_allclose(logits_from_hidden(params, config, hidden), logits, atol=1e-5)


def test_the_interface_refuses_another_config():
    with pytest.raises(TypeError, match="not a model config"):
        module_for({"d_model": 8})


def test_llama_xla_attention_equals_critkls():
    params = init_params(jax.random.key(0), TINY_LLAMA)
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 259)
    ours = module_for(TINY_LLAMA).apply({"params": params}, tokens)[0]
    xla = module_for(dataclasses.replace(TINY_LLAMA, attention="xla")).apply(
        {"params": params}, tokens)[0]
    np.testing.assert_allclose(xla, ours, atol=1e-4)


# --- RL on a tiny random LLaMA --------------------------------------------------------------


def test_one_rl_iteration_of_a_tiny_llama_on_short_addition(tiny_task_registered):
    """collect's episodes are scored as the plain-Python reference scores them, its action
    tokens are each episode's generation; an update moves the policy; the policy-entropy
    signal reads the LLaMA's logits through the interface."""
    loss = LossConfig(weight_signal="policy_entropy")
    config = RLConfig(task=TinyShortAddition.name, n=1, extra_digits=1, episodes=4,
                      iterations=1, minibatches=2, eval_every=1, eval_episodes=4,
                      value_hidden_sizes=(8,), loss=loss)
    with pytest.raises(ValueError, match="vocabulary of 96 tokens"):
        config.check_model(dataclasses.replace(TINY_LLAMA, vocab_size=96))
    params = init_params(jax.random.key(0), TINY_LLAMA)
    hyper = jax.tree.map(jnp.float32, RLHyper(learning_rate=1e-3))
    state = rl.make_train(config, TINY_LLAMA).init(jax.random.key(1), hyper, params)
    plan = rl.Plan(config, TINY_LLAMA, module_for(TINY_LLAMA), rl.ValueHead((8,)),
                   rl.update_widths(config), config.minibatch_size // config.chunks,
                   rl.strategies.resolve(None))

    @jax.jit
    def iteration(state):  # rl.make_train's iteration, its collect's batch kept
        batch, metrics = rl.collect(plan, state, hyper, params, jax.random.key(2))
        state, update_metrics = rl.update(plan, state, hyper, batch, jax.random.key(3))
        return batch, metrics, update_metrics, state

    batch, metrics, update_metrics, new_state = iteration(state)
    tok, task = tiny_tokenizer(), config.text_task
    tokens = np.asarray(batch.tokens)
    mask = np.asarray(batch.action_mask)
    successes = []
    for row in range(tokens.shape[0]):
        acted = np.nonzero(mask[row])[0]
        prompt = acted[0]
        text = tok.decode(tokens[row, :prompt].tolist())
        a, b = map(int, text.split("What is ")[1].split("?")[0].split(" + "))
        success, _, last = reference_score(tok, tokens[row, prompt:].tolist(), a, b)
        assert acted.tolist() == list(range(prompt, prompt + last + 1))
        successes.append(success)
    assert float(metrics["train/success"]) == np.mean(successes)
    assert task.episode_limit() == tokens.shape[1]
    assert np.isfinite(float(update_metrics["loss"]))
    moved = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), new_state.policy, params)
    assert max(jax.tree.leaves(moved)) > 0


# --- loading by name or folder --------------------------------------------------------------


def test_an_hf_folder_loads_as_a_pretrained_lm_and_another_tokenizer_is_refused(tmp_path):
    from test_llama import random_hf_tensors, write_hf

    tok = smollm2_tokenizer_or_skip()
    config = dataclasses.replace(TINY_LLAMA, vocab_size=49152, d_model=16, head_dim=4,
                                 d_ff=16, context_length=256)
    tensors = random_hf_tensors(config)
    folder = write_hf(tmp_path / "lm", config, tensors)
    for written in (tok, tiny_tokenizer()):
        written.backend.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "eos_token": "<|im_end|>", "chat_template": written.chat_template}))
        if written is tok:
            lm, params = models.load_pretrained(str(folder))
            assert (lm.task, lm.max_digits, lm.model_config) == ("short-addition", 1, config)
            np.testing.assert_array_equal(params["token_embedding"]["embedding"],
                                          tensors["model.embed_tokens.weight"])
            assert lm.text_task == ShortAddition(1, 0, shots=1)
            RLConfig(task=lm.task, task_params=lm.task_params, n=lm.max_digits).check_model(
                lm.model_config)
        else:
            with pytest.raises(checkpoint.CheckpointError, match="other token ids"):
                models.load_pretrained(str(folder))


def test_a_named_lm_beside_a_folder_of_its_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="both a shipped model"):
        models.load_pretrained("smollm2-135m")


@pytest.mark.slow
@pytest.mark.parametrize("kl", [["--kl-coef", "0"], ["--beta", "0"], []],
                         ids=["no-kl", "standard", "prioritized"])
def test_finetune_smollm2_end_to_end(tmp_path, kl):
    smollm2_tokenizer_or_skip()
    run_dir = tmp_path / "run"
    # A process per run: each holds about 8 GB at its peak, freed only when it exits.
    subprocess.run([sys.executable, "-m", "critkl.cli", "finetune", "smollm2-135m",
                    "--run-dir", str(run_dir), "--episodes", "8", "--iterations", "1",
                    "--eval-every", "1", "--eval-episodes", "8", "--minibatches", "2", *kl],
                   check=True)
    results = json.loads((run_dir / "results.json").read_text())
    curve = results["runs"][0]["curve"]
    assert curve["iteration"] == [0, 1]
    assert all(0 <= value <= 1 for value in curve["eval/pass_at_1"])
