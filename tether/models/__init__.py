"""Models: loading (hf), log-probs, tokens, sampling, the KV-cached Llama forward, reward and value models."""
