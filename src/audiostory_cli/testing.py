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
    """A two-layer T5 encoder with a Unigram tokenizer trained on ``_CORPUS`` (``</s>`` appended, as T5)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
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
    }
    for name, build in builders.items():
        print(build(args.dir / name, seed=args.seed))


if __name__ == "__main__":
    main()
