"""The tiny random planner as one GGUF file, for the llama.cpp engine and transformers' GGUF loader.

The same weights and tokenizer as ``build_tiny_planner`` (a Qwen2 model, byte-level BPE, ChatML template),
written with the ``gguf`` package's writer under llama.cpp's names: the ``qwen2`` architecture, float32
tensors, the vocabulary padded to the embedding rows as real Qwen files are, the chat template in the
metadata. ``python -m audiostory_cli.testing DIR`` writes it as ``DIR/planner.gguf``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

GGUF_ARCH = "qwen2"  # llama.cpp's name for the Qwen2 architecture (no q/k permutation, NEOX rope)
GGUF_PRE_TOKENIZER = "qwen2"  # the tiny tokenizer splits digits one by one, as Qwen2's regex does
_LAYER_TENSORS = {  # Hugging Face name inside model.layers.N -> llama.cpp name inside blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def build_tiny_planner_gguf(path: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny random planner (``build_tiny_planner`` with ``seed``) as the GGUF file ``path``."""
    from .planner import build_tiny_planner

    with tempfile.TemporaryDirectory() as folder:
        return planner_folder_to_gguf(build_tiny_planner(Path(folder) / "planner", seed=seed), path)


def planner_folder_to_gguf(folder: str | Path, path: str | Path) -> Path:
    """Convert a tiny Qwen2 planner folder (config.json, model.safetensors, tokenizer.json, tied embeddings)
    to one GGUF file; the file is written under a temporary name and renamed, so it is never half there."""
    import gguf
    from safetensors.numpy import load_file

    folder, path = Path(folder), Path(path)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "qwen2" or not config.get("tie_word_embeddings"):
        raise ValueError(f"{folder}: expected a Qwen2 model with tied embeddings, got {config.get('model_type')}")
    weights = load_file(folder / "model.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), GGUF_ARCH)
    # 1. The model's shape.
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(float(config.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # 2. The tokenizer and the chat template.
    _add_tokenizer(writer, folder, vocab_rows=config["vocab_size"], eos_id=config["eos_token_id"])
    # 3. The tensors, under llama.cpp's names (the output head is the tied embedding).
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].astype(np.float32))
    for layer in range(config["num_hidden_layers"]):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            writer.add_tensor(f"blk.{layer}.{gguf_name}", weights[f"model.layers.{layer}.{hf_name}"].astype(np.float32))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"].astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return path


def _add_tokenizer(writer, folder: Path, *, vocab_rows: int, eos_id: int) -> None:
    """Byte-level BPE in llama.cpp's "gpt2" tokenizer keys; padding tokens fill the vocabulary to the rows."""
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    specials = {t["id"]: t["content"] for t in data["added_tokens"]}
    by_id = {index: token for token, index in vocab.items()} | specials
    tokens, types = [], []
    for index in range(vocab_rows):
        if index in specials:
            tokens.append(specials[index])
            types.append(gguf.TokenType.CONTROL)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:  # the rows past the tokenizer, as in Qwen's own files
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    template = tokenizer_config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    pad = tokenizer_config.get("pad_token")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(eos_id)
    if pad in vocab or pad in specials.values():
        writer.add_pad_token_id(tokens.index(pad))
    writer.add_add_bos_token(False)
    if template:
        writer.add_chat_template(template)
