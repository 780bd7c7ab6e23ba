"""Builds tiny random checkpoints in the real on-disk layouts, for tests and demos.

``python -m audiostory_cli.testing DIR`` writes ``DIR/planner`` (more components join as they are built).
Every checkpoint loads through the same loaders as real weights, runs in seconds on a CPU and needs no
network: tokenizers are trained here with the ``tokenizers`` package, weights come from a local
``torch.Generator`` (the global RNG is left untouched), so the same seed writes the same files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen's chat markers, eos = <|im_end|>
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A few KB of English about sounds, and plans written as JSON, to train the tiny tokenizer on.
_CORPUS = """\
Waves break on pebbles and pull back with a hiss. Wind moves over the dunes and through dry grass.
A wooden door creaks open, then footsteps on gravel come closer and stop. A dog barks twice far away.
Rain starts as a few heavy drops on a tin roof, then a steady downpour drums on the metal.
Thunder rolls in the distance; a second crack of thunder is close and sharp. Gusts rattle the shutters.
A ship's bell rings slowly in the harbor. Ropes creak against wooden posts, water laps at the hull.
Seagulls cry overhead, their calls echo over the water. A foghorn sounds low and long.
A kettle starts to whistle on the stove, a cup clinks on a saucer, a spoon stirs tea.
Birds sing at dawn in a forest; leaves rustle as a small animal runs through the undergrowth.
A car engine starts, idles, then drives away on a wet road. Tires hiss on the asphalt.
Crowd murmur in a busy market, a vendor calls out, coins drop into a metal tray.
A clock ticks in a quiet room. A page turns. A chair scrapes on a wooden floor.
Footsteps echo in a stone corridor, a heavy iron gate slams shut, a key turns in the lock.
Fire crackles in a fireplace, logs shift and settle, sparks pop.
A train approaches, its horn blows, wheels clatter over the rails and fade into the distance.
Heavy rain on leaves, a stream rushes over rocks, frogs croak near the pond at night.
Church bells ring across the valley; sheep bleat on the hillside; a tractor rumbles past.
A glass shatters on a tiled floor. Someone gasps. Running footsteps on stairs.
Soft piano notes drift from an open window while distant traffic hums.
The storm passes, the rain stops, water drips from the gutters, and the gulls return.
calm, tense, ominous, peaceful, joyful, melancholic, mysterious, dramatic, hopeful, eerie
The story starts quiet, builds to a storm, and ends in calm. Each event is one clear sound.
{"reasoning": "A calm shore, a visitor arrives, then leaves.", "tone": "calm", "events": [
{"caption": "waves break on pebbles, wind over the shore", "duration_s": 8, "tone": "calm"},
{"caption": "a wooden door creaks open, then footsteps on gravel", "duration_s": 5, "tone": "curious"}]}
{"reasoning": "Rain builds into a storm and fades.", "tone": "tense", "events": [
{"caption": "light rain on a tin roof", "duration_s": 10, "tone": "quiet"},
{"caption": "thunder rolls and heavy rain pours", "duration_s": 12, "tone": "tense"},
{"caption": "water drips from gutters as birds sing", "duration_s": 9, "tone": "hopeful"}]}
You plan a story as a sequence of sound events. Captions describe what is heard, not what happens.
Answer with JSON only. The durations add up to the total length of the story in seconds.
A helicopter circles above the city; sirens wail and a police radio crackles with static.
Children laugh on a playground, a swing squeaks, a ball bounces on concrete and rolls away.
An owl hoots in the dark woods, crickets chirp, a branch snaps under a heavy boot.
Keyboard keys clatter in an office, a printer whirs, a telephone rings three times.
A waterfall roars into a deep pool; spray hisses on mossy stones below the cliff.
Horses gallop across a field, hooves thunder on the dry earth, a rider shouts.
The elevator dings, doors slide open, muffled music plays inside the empty lobby.
Snow crunches under boots, a sled scrapes over ice, wind howls between frozen pines.
A blacksmith hammers hot iron on an anvil; metal rings, steam hisses in a water barrel.
An old radio tunes between stations, static and whistles, then a faint voice and a song.
Distant explosions thud, debris rattles down, then an eerie silence with a low drone.
Bees buzz among flowers in a summer garden, a lawnmower hums two houses away.
A submarine sonar pings in deep water, hull groans under pressure, bubbles rise.
A spaceship hatch hisses open, servos whine, an alarm beeps in a steady rhythm.
Market stalls close at dusk: shutters roll down, carts squeak, pigeons flutter up.
The river flows under the bridge, a rowing boat knocks against the pier, oars splash.
Pouring coffee, a microwave beeps, toast pops up, a radio talks softly in the kitchen.
A cat purrs on a windowsill while raindrops tap on the glass and a heater ticks.
Marching drums and brass in a parade, confetti cannons pop, the crowd cheers and claps.
A hospital monitor beeps, a cart rolls down the hallway, a door closes with a soft click.
A mine cart rattles along old tracks, water drips in a cavern, a lantern creaks on a hook.
Sand blows across the desert, a camel grunts, tent canvas flaps in the hot wind.
Rules: durations in whole seconds; tone in one or two words; at most a few events per story.
Reasoning explains the arc of the story and why each sound was chosen, in one or two sentences.
"""


@dataclass(frozen=True)
class TinyPlannerConfig:
    """Size of the tiny planner LLM: small enough to build and run in seconds on a CPU."""

    vocab_size: int = 1536  # BPE vocabulary the tokenizer is trained to (it may end up smaller)
    hidden_size: int = 64  # width of the residual stream
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention, as in Qwen2)
    intermediate_size: int = 128  # MLP width
    max_positions: int = 32768  # longest prompt + answer (the longest plan grammar admits ~13k tokens)
    init_gain: float = 4.0  # weights ~ normal(0, gain / sqrt(fan_in)): peaked enough that greedy picks are not ties


def build_tiny_planner(path: str | Path, *, seed: int = 0, config: TinyPlannerConfig = TinyPlannerConfig()) -> Path:
    """Write a tiny random Qwen2 chat model (ChatML template, local BPE tokenizer) to ``path``."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(config.vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    model_config = Qwen2Config(
        vocab_size=_round_up(len(tokenizer), 64),  # padded past the tokenizer, as real checkpoints are
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the constructor's own init must not move the global RNG
        model = Qwen2ForCausalLM(model_config)
    _fill_random(model, seed, config.init_gain)
    model.generation_config.eos_token_id = model_config.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _train_bpe(vocab_size: int):
    """A byte-level BPE tokenizer trained on ``_CORPUS``, with the ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(CHATML_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def _fill_random(model: torch.nn.Module, seed: int, gain: float) -> None:
    """Overwrite every parameter from a local generator: norms at 1, the rest normal(0, gain / sqrt(fan_in))."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            else:
                fan_in = param.shape[-1] if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=generator) * (gain / fan_in**0.5))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --- decoder (TangoFlux layout) ------------------------------------------------------------------------

TANGOFLUX_SIZES = {  # the DiT sizes in declare-lab/TangoFlux's config.json: the real decoder
    "num_layers": 6, "num_single_layers": 18, "attention_head_dim": 128, "num_attention_heads": 8,
    "joint_attention_dim": 1024,
}  # fmt: skip
TINY_DECODER_SIZES = {  # one block of each kind, one head: renders a clip in milliseconds on a CPU
    "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 1,
    "joint_attention_dim": 32,
}  # fmt: skip
TINY_VAE = dict(encoder_hidden_size=4, channel_multiples=[1, 2, 2, 2, 2], decoder_channels=4)  # Oobleck, 2048 hop


def build_tiny_decoder(path: str | Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Write a TangoFlux-layout decoder with random weights: ``config.json``, ``tangoflux.safetensors``,
    ``vae.safetensors`` and ``text_encoder/`` (a T5 encoder with a locally trained tokenizer).

    ``size="real"`` gives the DiT, the T5 width and the VAE their published sizes (for GPU timing); the T5
    keeps two layers. ``size="tiny"`` makes everything small.
    """
    import json
    import warnings
    from dataclasses import asdict

    from diffusers import AutoencoderOobleck
    from safetensors.torch import save_file

    from .decoder import TangoFluxConfig, TangoFluxDiT

    if size not in ("tiny", "real"):
        raise ValueError(f"size = {size!r}: must be 'tiny' or 'real'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {**asdict(TangoFluxConfig()), **(TINY_DECODER_SIZES if size == "tiny" else TANGOFLUX_SIZES)}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _build_t5_encoder(path / "text_encoder", d_model=config["joint_attention_dim"], seed=seed + 1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dit = TangoFluxDiT(TangoFluxConfig.from_dict(config), config["joint_attention_dim"])
        vae = AutoencoderOobleck(**(TINY_VAE if size == "tiny" else {}))
    _fill_random(dit, seed + 2, gain=1.0)
    _fill_random(vae, seed + 3, gain=1.0)
    _tame_vae(vae, quieten=size == "tiny")
    save_file(_plain_state(dit), str(path / "tangoflux.safetensors"))
    save_file(_plain_state(vae), str(path / "vae.safetensors"))
    return path


def _build_t5_encoder(path: Path, *, d_model: int, seed: int) -> None:
    """A two-layer T5 encoder with a word-level tokenizer over ``_CORPUS``'s words (``</s>`` appended, as T5).

    The vocabulary is the corpus's sorted words, so the same call writes the same files (a trained Unigram
    model is not reproducible across runs)."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = sorted(set(re.findall(r"[a-z0-9']+|[^\sa-z0-9']", _CORPUS.lower())))
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    config = T5Config(
        vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2,
        num_heads=max(1, d_model // 16), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        encoder = T5EncoderModel(config)
    _fill_random(encoder, seed, gain=1.0)
    encoder.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _tame_vae(vae, *, quieten: bool) -> None:
    """Snake activations at alpha = beta = 1 (random log-scales make them chaotic, so float rounding would
    decide the output), and, for the tiny VAE, an output layer scaled so random latents peak near 0.5."""
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith((".alpha", ".beta")):
                param.zero_()  # Oobleck's snake parameters are log-scale: 0 means 1
        if not quieten:
            return
        latents = torch.randn((1, vae.config.decoder_input_channels, 32), generator=torch.Generator().manual_seed(0))
        peak = vae.decode(latents).sample.abs().max().clamp(min=1e-6)
        vae.decoder.conv2.weight_g.mul_(0.5 / peak)


def _plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


# --- AudioStory (TencentARC/AudioStory-3B layout) ---------------------------------------------------------

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
    names, config fields, key names (peft 0.4 LoRA and modules_to_save naming) and special tokens."""
    import json
    import warnings
    from dataclasses import asdict

    import yaml
    from diffusers import AutoencoderOobleck
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from .audiostory_model import FUSION_HEADS, mlp_projector
    from .decoder import TangoFluxConfig, TangoFluxDiT

    path, sizes = Path(path), TinyAudioStoryConfig()
    path.mkdir(parents=True, exist_ok=True)
    # 1. tokenizer/: a byte-level BPE with Qwen's specials after its vocabulary, and upstream's added_tokens.json.
    tokenizer = _build_qwen_style_tokenizer(path / "tokenizer", sizes.vocab_size)
    rows = tokenizer.get_vocab_size(with_added_tokens=True) + len(audiostory_added_tokens())
    # 2. The base LLM's config (vocabulary padded as Qwen's is; the checkpoint's embedding is resized past it).
    qwen = Qwen2Config(
        vocab_size=_round_up(tokenizer.get_vocab_size(with_added_tokens=True), 64), hidden_size=sizes.hidden_size,
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
    _build_t5_encoder(path / "flan-t5-large", d_model=sizes.text_dim, seed=seed + 1)
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
    _fill_random(vae, seed + 3, gain=1.0)
    _tame_vae(vae, quieten=True)
    save_file(_plain_state(vae), str(path / "Flux_detokenizer" / "model.safetensors"))
    # 4. pytorch_model.bin: the whole model under upstream's module names.
    _fill_random(llm, seed + 4, gain=2.0)
    _fill_random(dit, seed + 2, gain=1.0)
    state = _peft_llm_state(llm, sizes, seed + 5)
    _steer_tiny_llm(state, tokenizer, sizes)
    for offset, (prefix, module) in enumerate(heads.items()):
        _fill_random(module, seed + 6 + offset, gain=1.0)
        state.update({prefix + k: v for k, v in _plain_state(module).items()})
    state.update({"tangoflux." + k: v for k, v in _plain_state(dit).items()})
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
    """A byte-level BPE trained on ``_CORPUS``, Qwen's 22 specials after it, Qwen-style tokenizer_config.json,
    and upstream's added_tokens.json (whose ids a loader must not trust)."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
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
    for name, tensor in _plain_state(llm).items():
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


def main(argv: list[str] | None = None) -> None:
    """``python -m audiostory_cli.testing DIR``: write the tiny checkpoints under DIR, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m audiostory_cli.testing", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to write the tiny checkpoints into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--size", choices=("tiny", "real"), default="tiny", help="decoder size: tiny, or TangoFlux's real size"
    )
    args = parser.parse_args(argv)
    builders = {
        "planner": build_tiny_planner,
        "decoder": lambda path, seed: build_tiny_decoder(path, seed=seed, size=args.size),
        "audiostory": build_tiny_audiostory,
    }
    for name, build in builders.items():
        print(build(args.dir / name, seed=args.seed))


if __name__ == "__main__":
    main()
