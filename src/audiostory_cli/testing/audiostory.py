"""The tiny AudioStory checkpoint in the released TencentARC/AudioStory-3B layout, with the same file names,
config fields, key names and special tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .common import CORPUS, fill_random, plain_state, round_up
from .planner import CHATML_TEMPLATE
from .tangoflux import TINY_DECODER_SIZES, TINY_VAE, build_t5_encoder, tame_vae

QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip  # Qwen2.5's 22 added tokens, right after its base vocabulary
AUDIOSTORY_LLM_PREFIX = "seedx.llm.base_model.model."  # peft 0.4's PeftModelForCausalLM around Qwen2ForCausalLM
AUDIOSTORY_LORA_TARGETS = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")


def audiostory_added_tokens() -> dict[str, int]:
    """The 612 names of upstream's tokenizer/added_tokens.json in file order, with the ids that file states
    (inconsistent: four names share 151938, and none is the id the name really gets)."""
    tokens = {"</t5>": 151937, "<video_padding>": 151939, "<timestamp>": 152165, "</timestamp>": 152164, "<t5>": 151936}
    tokens.update({f"<t5_{i:05d}>": 151836 + i for i in range(100)})
    tokens.update({"<aud>": 152166, "</aud>": 152167})
    tokens.update({f"<aud_{i:05d}>": 152168 + i for i in range(501)})
    tokens.update({name: 151938 for name in ("<|gen|>", "<|/gen|>", "<|think|>", "<|/think|>")})
    return tokens


@dataclass(frozen=True)
class TinyAudioStoryConfig:
    """Sizes of the tiny AudioStory checkpoint; the released one has 2048 / 36 / 16 / 2 / 11008 / 1024, r 32."""

    vocab_size: int = 1024  # BPE vocabulary the tokenizer is trained to, before Qwen's 22 specials
    hidden_size: int = 64  # LLM width (config.yaml model_dims)
    num_layers: int = 2  # LLM blocks
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads
    intermediate_size: int = 128  # MLP width
    text_dim: int = 32  # T5 width = projector output = the DiT's text width (1024 in the release)
    lora_r: int = 4  # LoRA rank
    lora_alpha: float = 8.0  # alpha / r = 2, so a merge that forgets the scale shows
    num_semantic: int = 64  # <t5_…> query tokens per clip (num_t5_out_tokens)
    num_residual: int = 8  # <aud_…> query tokens per clip (num_aud_out_tokens)
    steer: float = 4.0  # see _steer_tiny_llm


def build_tiny_audiostory(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint in the layout ``audiostory_model`` reads (see its docstring): the same file
    names, config fields, key names (peft 0.4 LoRA and modules_to_save naming, the frozen T5 under
    ``tangoflux.text_encoder.*`` as in the released ``pytorch_model.bin``) and special tokens."""
    import json
    import warnings
    from dataclasses import asdict

    import yaml
    from diffusers import AutoencoderOobleck
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ..decoders.tangoflux.config import TangoFluxConfig
    from ..decoders.tangoflux.modules import TangoFluxDiT
    from ..models.audiostory.fusion import FUSION_HEADS, mlp_projector

    path, sizes = Path(path), TinyAudioStoryConfig()
    path.mkdir(parents=True, exist_ok=True)
    # 1. tokenizer/: a byte-level BPE with Qwen's specials after its vocabulary, and upstream's added_tokens.json.
    tokenizer = _build_qwen_style_tokenizer(path / "tokenizer", sizes.vocab_size)
    rows = tokenizer.get_vocab_size(with_added_tokens=True) + len(audiostory_added_tokens())
    # 2. The base LLM's config (vocabulary padded as Qwen's is; the checkpoint's embedding is resized past it).
    qwen = Qwen2Config(
        vocab_size=round_up(tokenizer.get_vocab_size(with_added_tokens=True), 64), hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=True,
        eos_token_id=tokenizer.token_to_id("<|im_end|>"), pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
    )  # fmt: skip
    qwen.save_pretrained(path / "Qwen2.5-3B-Instruct")
    eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    generation = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                  "eos_token_id": eos, "pad_token_id": eos[1]}  # fmt: skip  # Qwen2.5-Instruct's
    (path / "Qwen2.5-3B-Instruct" / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    # 3. flan-t5-large/ and Flux_detokenizer/ (DiT sizes; model.safetensors is the VAE).
    t5 = build_t5_encoder(path / "flan-t5-large", d_model=sizes.text_dim, seed=seed + 1)
    flux = {**asdict(TangoFluxConfig()), **TINY_DECODER_SIZES, "joint_attention_dim": sizes.text_dim}
    flux["text_encoder_name"] = "ckpt/flan-t5-large"  # upstream's default: a folder of its ckpt/
    (path / "Flux_detokenizer").mkdir(exist_ok=True)
    (path / "Flux_detokenizer" / "config.json").write_text(json.dumps(flux, indent=2) + "\n")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = AutoencoderOobleck(**TINY_VAE)
        llm = Qwen2ForCausalLM(_with_vocab(qwen, rows))
        dit = TangoFluxDiT(TangoFluxConfig.from_dict(flux), sizes.text_dim)
        heads = {
            "seedx.projector.": mlp_projector(sizes.hidden_size, sizes.text_dim),
            "seedx.audio_projector.": mlp_projector(sizes.hidden_size, sizes.text_dim),
            "multihead_attention.": torch.nn.MultiheadAttention(sizes.text_dim, FUSION_HEADS),
        }
    fill_random(vae, seed + 3, gain=1.0)
    tame_vae(vae, quieten=True)
    save_file(plain_state(vae), str(path / "Flux_detokenizer" / "model.safetensors"))
    # 4. pytorch_model.bin: the whole model under upstream's module names.
    fill_random(llm, seed + 4, gain=2.0)
    fill_random(dit, seed + 2, gain=1.0)
    state = _peft_llm_state(llm, sizes, seed + 5)
    _steer_tiny_llm(state, tokenizer, sizes)
    for offset, (prefix, module) in enumerate(heads.items()):
        fill_random(module, seed + 6 + offset, gain=1.0)
        state.update({prefix + k: v for k, v in plain_state(module).items()})
    state.update({"tangoflux." + k: v for k, v in plain_state(dit).items()})
    t5_state = t5.state_dict()  # the frozen T5 is saved too, under both names of its tied embedding
    state.update({"tangoflux.text_encoder." + k: v.detach() for k, v in t5_state.items()})
    torch.save(state, path / "pytorch_model.bin")
    # 5. config.yaml: the nodes and fields upstream's inference script reads.
    (path / "config.yaml").write_text(yaml.safe_dump(_tiny_audiostory_yaml(sizes, rows), sort_keys=False))
    return path


def _with_vocab(config, rows: int):
    """A copy of a transformers config with ``vocab_size`` = rows (upstream resizes the embedding to 152277)."""
    from copy import deepcopy

    config = deepcopy(config)
    config.vocab_size = rows
    return config


def _build_qwen_style_tokenizer(folder: Path, vocab_size: int):
    """A byte-level BPE trained on ``CORPUS``, Qwen's 22 specials after it, Qwen-style tokenizer_config.json,
    and upstream's added_tokens.json (whose ids a loader must not trust)."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in QWEN_SPECIALS])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    decoder_entries = {
        str(tokenizer.token_to_id(name)): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                           "single_word": False, "special": True}
        for name in QWEN_SPECIALS
    }  # fmt: skip
    config = {
        "added_tokens_decoder": decoder_entries, "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False,
        "errors": "replace", "model_max_length": 131072, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "added_tokens.json").write_text(json.dumps(audiostory_added_tokens(), indent=4) + "\n")
    return tokenizer


def _peft_llm_state(llm, sizes: TinyAudioStoryConfig, seed: int) -> dict[str, torch.Tensor]:
    """The LLM's weights as peft 0.4 saved them: base ``q_proj.weight`` beside ``q_proj.lora_{A,B}.default.weight``
    (B non-zero), every RMSNorm as ``original_module`` (pretrained) + ``modules_to_save.default`` (trained, different),
    the tied embedding under both names."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in plain_state(llm).items():
        module, _, param = name.rpartition(".")
        leaf = module.rsplit(".", 1)[-1]
        if leaf.endswith("norm"):
            state[f"{AUDIOSTORY_LLM_PREFIX}{module}.original_module.{param}"] = torch.full_like(tensor, 0.5)
            trained = 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator)
            state[f"{AUDIOSTORY_LLM_PREFIX}{module}.modules_to_save.default.{param}"] = trained
            continue
        state[AUDIOSTORY_LLM_PREFIX + name] = tensor
        if leaf in AUDIOSTORY_LORA_TARGETS and param == "weight":
            out_dim, in_dim = tensor.shape
            a = torch.randn((sizes.lora_r, in_dim), generator=generator) / in_dim**0.5
            b = 0.1 * torch.randn((out_dim, sizes.lora_r), generator=generator)
            state[f"{AUDIOSTORY_LLM_PREFIX}{module}.lora_A.default.weight"] = a
            state[f"{AUDIOSTORY_LLM_PREFIX}{module}.lora_B.default.weight"] = b
    return state


def _steer_tiny_llm(state: dict[str, torch.Tensor], tokenizer, sizes: TinyAudioStoryConfig) -> None:
    """Random weights would stop at random; steer them so the tiny model opens clips. Channel 0 of the residual
    stream is held at 1 (every token embeds 1 there, no layer writes to it), so after the final norm it is
    positive; ``<|gen|>`` reads it with +steer and the end-of-text tokens with -steer, so greedy decoding opens
    a clip rather than stopping. The grammar does the rest."""
    embedding = state[AUDIOSTORY_LLM_PREFIX + "model.embed_tokens.weight"]  # also lm_head.weight: one tensor
    embedding[:, 0] = 1.0
    base = tokenizer.get_vocab_size(with_added_tokens=True)
    gen = base + list(audiostory_added_tokens()).index("<|gen|>")  # ids in file order after the vocabulary
    for token, sign in ((gen, 1.0), (tokenizer.token_to_id("<|im_end|>"), -1.0), (tokenizer.token_to_id("<|endoftext|>"), -1.0)):
        embedding[token] = 0.0
        embedding[token, 0] = sign * sizes.steer
    for key, tensor in state.items():
        if key.endswith(("o_proj.weight", "down_proj.weight", "o_proj.lora_B.default.weight", "down_proj.lora_B.default.weight")):
            tensor[0] = 0.0
        if key.endswith("model.norm.modules_to_save.default.weight"):
            tensor[0] = 1.0


def _tiny_audiostory_yaml(sizes: TinyAudioStoryConfig, rows: int) -> dict:
    """Upstream's Hydra config: the nodes its inference script instantiates, with the tiny sizes."""
    qwen = {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "ckpt/Qwen2.5-3B-Instruct"}  # fmt: skip
    peft = {
        "_target_": "peft.LoraConfig", "_convert_": "object", "r": sizes.lora_r, "lora_alpha": sizes.lora_alpha,
        "modules_to_save": ["input_layernorm", "post_attention_layernorm", "norm"],
        "target_modules": list(AUDIOSTORY_LORA_TARGETS), "task_type": "CAUSAL_LM", "lora_dropout": 0.05,
    }  # fmt: skip
    return {
        "tokenizer": {"_target_": "src.models.tokenizer.init_qwen_tokenizer.init_tokenizer",
                      "pretrained_model_path": "ckpt/Qwen2.5-3B-Instruct", "add_tokens_path": "tokenizer/added_tokens.json"},
        "llm_model": {"_target_": "src.models.mllm.peft_models.get_peft_model_with_resize_embedding",
                      "model": qwen, "peft_config": peft, "vocab_size": rows},
        "agent_model": {"_target_": "src.models.mllm.modeling_audiostory_llm.AudioStory_llm.from_pretrained",
                        "input_resampler": None, "output_resampler": None, "whisper_resampler_llava": None,
                        "model_dims": sizes.hidden_size, "t5_feature_scale": 10.0},
        "seedx_dit_model_cfg": {"_target_": "src.models.mllm.modeling_audiostory_unified.AudioStory_unified",
                                "rec_loss_type": "mse", "model_dims": sizes.hidden_size},
        "train_dataset": {"datapipes": [{"num_t5_out_tokens": sizes.num_semantic,
                                         "num_aud_out_tokens": sizes.num_residual}]},
    }  # fmt: skip

