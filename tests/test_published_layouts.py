"""Every loader held against the published checkpoints' key listings (``../shared/manifests/``), at real size
on the meta device: no weights, no memory. Each listing's names and shapes go through the same mapping and
strict checks the loader runs on a real file; nothing may be missing, left over or mis-shaped, and a key
dropped, renamed or reshaped is refused with its name. The tiny builders must write the same names."""

from __future__ import annotations

import functools
import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from audiostory_cli.decoders.stable_audio_3 import weights as sa3_weights
from audiostory_cli.decoders.stable_audio_3.config import WEIGHTS as SA3_WEIGHTS
from audiostory_cli.decoders.tangoflux import weights as tf_weights
from audiostory_cli.decoders.tangoflux.config import TangoFluxConfig
from audiostory_cli.decoders.tangoflux.modules import TangoFluxDiT
from audiostory_cli.decoders.weights import check_state
from audiostory_cli.errors import ModelLoadError
from audiostory_cli.models.audiostory import load as am_load
from audiostory_cli.models.audiostory.config import AudioStoryConfig
from audiostory_cli.models.audiostory.peft_keys import match_weights

sa3_convert = importlib.import_module("audiostory_cli.decoders.stable_audio_3.convert")  # the package's
# ``convert`` attribute is the function that writes the diffusers layout

MANIFESTS = Path(__file__).resolve().parents[2] / "shared" / "manifests"
pytestmark = pytest.mark.skipif(
    not (MANIFESTS / "README.md").is_file(),
    reason=f"the published key listings are not here ({MANIFESTS}: the project's shared/manifests/ beside the repo)",
)

# Sizes the listings were built from, where no config file of ours holds them (see the listings' comments).
SA3_SAMPLE_SIZE = {"small-sfx": 5292032, "small-music": 5292032, "medium": 16777216}  # Small: 120 s, whole frames
T5GEMMA_B = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, head_dim=64,
                 num_key_value_heads=12, vocab_size=256000)  # fmt: skip  # google/t5gemma-b-b-ul2, both halves
FLAN_T5_LARGE = dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                     feed_forward_proj="gated-gelu")  # fmt: skip  # google/flan-t5-large
QWEN25_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)  # fmt: skip
AUDIOSTORY_ROWS = 152277  # the released embedding's rows (151665 tokens + 612 added)
NOT_IN_FILE = "EXPECTED-MISSING"  # a listing's note on a name the module has but the file does not hold


# --- the listings -----------------------------------------------------------------------------------------


@functools.cache
def listing(name: str, *, in_file_only: bool = True) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` of one listing (``key<TAB>[shape][<TAB>note]``), parsed once; names a note marks as not
    in the file are left out unless ``in_file_only`` is False."""
    shapes = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, *note = line.split("\t")
        if in_file_only and note and note[0].startswith(NOT_IN_FILE):
            continue
        shapes[key] = tuple(json.loads(shape))
    return shapes


def notes(name: str) -> dict[str, str]:
    rows = (line.split("\t") for line in (MANIFESTS / name).read_text().splitlines() if line and line[0] != "#")
    return {row[0]: row[2] for row in rows if len(row) > 2}


def meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The listing as a state dict of meta tensors (names and shapes, no data)."""
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def sa3_config(variant: str) -> sa3_convert.StabilityConfig:
    raw = json.loads((MANIFESTS / "reconstructed_model_configs.json").read_text())[variant]
    return sa3_convert.parse_config({**raw, "sample_size": SA3_SAMPLE_SIZE[variant]})


@functools.cache
def sa3_modules(variant: str) -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return sa3_convert.build_components(sa3_config(variant))


@functools.cache
def t5gemma_encoder():
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    config = T5GemmaConfig(encoder=T5GEMMA_B, decoder=T5GEMMA_B, vocab_size=T5GEMMA_B["vocab_size"],
                           is_encoder_decoder=False)  # fmt: skip  # as the loader reads the folder's config
    with torch.device("meta"):
        return T5GemmaEncoderModel(config)


@functools.cache
def flan_t5_encoder():
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        return T5EncoderModel(T5Config(**FLAN_T5_LARGE))


@functools.cache
def tangoflux_dit():
    with torch.device("meta"):
        return TangoFluxDiT(TangoFluxConfig(), FLAN_T5_LARGE["d_model"])


@functools.cache
def audiostory_modules():
    from transformers import Qwen2Config

    config = AudioStoryConfig(vocab_size=AUDIOSTORY_ROWS, model_dims=QWEN25_3B["hidden_size"])
    llm_config = Qwen2Config(**{**QWEN25_3B, "vocab_size": AUDIOSTORY_ROWS})  # the loader sets the file's rows
    llm, _, parts = am_load.empty_modules(config, llm_config, TangoFluxConfig(), FLAN_T5_LARGE["d_model"])
    return config, llm, parts


# --- each loader's check, on a state dict of one listing ----------------------------------------------------
# Each takes (state, path) and raises ModelLoadError on a misfit: the code the loader itself runs on a file.


def check_sa3_original(variant: str):
    def check(state, path):
        config, modules = sa3_config(variant), sa3_modules(variant)
        converted = sa3_convert.convert_state(state, config, modules, path)
        for name, module in modules.items():  # everything the module has comes from the file or is computed
            left = {k for k in module.state_dict() if k not in converted[name]}
            assert all(sa3_convert.is_computed(name, k, config) for k in left), left

    return check


def check_sa3_diffusers(variant: str):
    def check(state, path):
        components = {}
        for key, tensor in state.items():
            component, _, name = key.partition("/")
            components.setdefault(component, {})[name] = tensor
        if component_names := set(components) - set(sa3_modules(variant)):
            raise ModelLoadError(f"{path}: unexpected components {sorted(component_names)}")
        for component, module in sa3_modules(variant).items():
            check_state(module, components.get(component, {}), path / component)

    return check


def check_t5gemma(state, path):
    sa3_weights.check_text_encoder({k: tuple(t.shape) for k, t in state.items()}, t5gemma_encoder(), path)


def check_t5gemma_text_encoder(state, path):  # diffusers' text_encoder/ of a converted folder
    check_t5gemma({k.removeprefix("text_encoder/"): v for k, v in state.items()}, path)


def check_tangoflux(state, path):
    tf_weights.split_dit_file(state, tangoflux_dit(), flan_t5_encoder(), path)


def check_tangoflux_vae(state, path):
    config = tf_weights.oobleck_config(state, path)  # the loader reads the VAE's sizes off the tensors
    check_state(oobleck(json.dumps(config, sort_keys=True)), state, path)


@functools.cache
def oobleck(config: str):
    from diffusers import AutoencoderOobleck

    with torch.device("meta"):
        return AutoencoderOobleck(**json.loads(config))


def check_audiostory(state, path):
    config, llm, parts = audiostory_modules()
    assert am_load._embedding_rows(state, path) == AUDIOSTORY_ROWS
    match_weights(state, llm, parts, flan_t5_encoder(), config, path)


CASES = {  # listing -> the loader's check
    "sa3_small_sfx_original.txt": check_sa3_original("small-sfx"),
    "sa3_small_sfx_original.txt (small-music)": check_sa3_original("small-music"),
    "sa3_medium_original.txt": check_sa3_original("medium"),
    "sa3_medium_diffusers.txt": check_sa3_diffusers("medium"),
    "t5gemma_b_b_ul2_for_conditional_generation.txt": check_t5gemma,
    "t5gemma_b_b_ul2_encoder_diffusers_text_encoder.txt": check_t5gemma_text_encoder,
    "tangoflux.safetensors.txt": check_tangoflux,
    "tangoflux_vae.safetensors.txt": check_tangoflux_vae,
    "audiostory_pytorch_model.txt": check_audiostory,
}


def file_of(case: str) -> str:
    return case.split(" ")[0]


@pytest.mark.parametrize("case", CASES)
def test_the_published_file_loads_with_nothing_missing_left_over_or_misshaped(case):
    CASES[case](meta(listing(file_of(case))), Path(file_of(case)))


def test_small_in_diffusers_own_conversion_differs_only_by_the_decoder_mapping_kernel():
    """diffusers 0.42 builds SAME-S's decoder mapping with kernel 1 where the published file has kernel 3; our
    converter keeps the file's kernel 3, so that one tensor is the only misfit, and it is named."""
    original = listing("sa3_small_sfx_original.txt")["pretransform.model.decoder.layers.3.mapping.weight_v"]
    assert original[-1] == 3
    with pytest.raises(ModelLoadError) as err:
        check_sa3_diffusers("small-sfx")(meta(listing("sa3_small_sfx_diffusers.txt")), Path("small"))
    kernel = "wrong shapes: decoder.blocks.0.mapping.weight_v (512, 768, 1) (expected (512, 768, 3))"
    assert str(err.value).endswith(kernel)
    fixed = {**listing("sa3_small_sfx_diffusers.txt"), "vae/decoder.blocks.0.mapping.weight_v": original}
    check_sa3_diffusers("small-sfx")(meta(fixed), Path("small"))


def test_the_default_decoders_built_in_caps_are_what_its_published_config_describes(tmp_path):
    """A dry run plans for Small-SFX's caps without its files: they are the ones its model_config.json gives."""
    from audiostory_cli.decoders import stable_audio_3

    raw = json.loads((MANIFESTS / "reconstructed_model_configs.json").read_text())["small-sfx"]
    (tmp_path / "model_config.json").write_text(json.dumps({**raw, "sample_size": SA3_SAMPLE_SIZE["small-sfx"]}))
    assert stable_audio_3.describe(tmp_path) == stable_audio_3.default_caps()


def test_the_t5gemma_folder_is_the_full_encoder_decoder_whose_decoder_half_is_skipped():
    names = listing("t5gemma_b_b_ul2_for_conditional_generation.txt")
    decoder = [k for k in names if sa3_weights.TEXT_DECODER_HALF.match(k)]
    assert len(decoder) == 206 and len(names) - len(decoder) == len(t5gemma_encoder().state_dict()) == 134


def _editable(case: str) -> list[str]:
    """Keys whose loss the loader must notice: the first, middle and last of the listing, leaving out the
    ones a loader rightly does without (tied aliases, peft's frozen originals, the T5Gemma decoder half, SAME's
    rope and noise buffers, which are recomputed and value-checked)."""
    noted = notes(file_of(case))
    aliased = {note.split()[2] for note in noted.values() if note.startswith("ALIAS of ")}
    keys = [
        k for k in listing(file_of(case))
        if not re.search("ALIAS|frozen original", noted.get(k, "")) and k not in aliased
        and not sa3_weights.TEXT_DECODER_HALF.match(k)
        and not sa3_convert._ROPE.match(k) and k != sa3_convert.NOISE_SCALE_KEY
    ]  # fmt: skip
    return [keys[0], keys[len(keys) // 2], keys[-1]]


EDITS = [(case, i) for case in CASES for i in range(3)]


def _refused(case: str, state: dict) -> str:
    with pytest.raises(ModelLoadError) as err:
        CASES[case](meta(state), Path(file_of(case)))
    return str(err.value)


def _named(message: str, key: str) -> bool:
    """The key is named, in the file's spelling (a diffusers component's key without its folder)."""
    return key in message or key.partition("/")[2] in message


@pytest.mark.parametrize(("case", "which"), EDITS)
def test_a_dropped_key_is_refused_by_name(case, which):
    shapes = dict(listing(file_of(case)))
    key = _editable(case)[which]
    del shapes[key]
    assert _named(_refused(case, shapes), key)


@pytest.mark.parametrize(("case", "which"), EDITS)
def test_a_renamed_key_is_refused_by_both_names(case, which):
    shapes = dict(listing(file_of(case)))
    key = _editable(case)[which]
    renamed = key.replace(".", ".x", 1) if "." in key else key + "x"
    shapes[renamed] = shapes.pop(key)
    message = _refused(case, shapes)
    assert _named(message, key) and _named(message, renamed)


@pytest.mark.parametrize(("case", "which"), EDITS)
def test_a_reshaped_key_is_refused_by_name(case, which):
    shapes = dict(listing(file_of(case)))
    key = _editable(case)[which]
    shapes[key] = (shapes[key][0] + 1, *shapes[key][1:]) if shapes[key] else (2,)
    assert _named(_refused(case, shapes), key)


@pytest.mark.parametrize("variant", ["small-sfx", "medium"])
def test_a_stability_file_without_running_std_is_refused_by_name(variant):
    name = {"small-sfx": "sa3_small_sfx_original.txt", "medium": "sa3_medium_original.txt"}[variant]
    assert sa3_config(variant).auto_scale  # every published config: the file carries the learnt scale
    shapes = dict(listing(name))
    del shapes["pretransform.model.bottleneck.running_std"]
    with pytest.raises(ModelLoadError, match=r"missing keys: pretransform\.model\.bottleneck\.running_std"):
        check_sa3_original(variant)(meta(shapes), Path(name))


# --- the tiny builders write the same names -----------------------------------------------------------------


def pattern(key: str) -> str:
    """A key with its layer and block numbers as ``#``: the tiny models have fewer layers, the same names."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "#", key)


def patterns(keys) -> set[str]:
    return {pattern(k) for k in keys}


def safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return set(file.keys())


def test_tiny_stability_layouts_have_the_published_names(tiny_sa3_original, tiny_sa3_small):
    assert patterns(safetensors_keys(tiny_sa3_small / "model.safetensors")) == patterns(
        listing("sa3_small_sfx_original.txt"))  # fmt: skip
    assert patterns(safetensors_keys(tiny_sa3_original / "model.safetensors")) == patterns(
        listing("sa3_medium_original.txt"))  # fmt: skip
    for folder in (tiny_sa3_original, tiny_sa3_small):
        text = safetensors_keys(folder / sa3_convert.TEXT_FOLDER / "model.safetensors")
        assert patterns(text) == patterns(listing("t5gemma_b_b_ul2_for_conditional_generation.txt"))


def test_tiny_diffusers_layout_has_the_published_names(tiny_sa3):
    written = {
        f"{component}/{key}"
        for component in ("transformer", "vae", "duration_embedder")
        for key in safetensors_keys(tiny_sa3 / component / SA3_WEIGHTS)
    }
    assert patterns(written) == patterns(listing("sa3_medium_diffusers.txt"))
    text = {"text_encoder/" + k for k in safetensors_keys(tiny_sa3 / "text_encoder" / "model.safetensors")}
    assert patterns(text) == patterns(listing("t5gemma_b_b_ul2_encoder_diffusers_text_encoder.txt"))


def test_tiny_tangoflux_has_the_published_names(tiny_decoder):
    assert patterns(safetensors_keys(tiny_decoder / "tangoflux.safetensors")) == patterns(
        listing("tangoflux.safetensors.txt"))  # fmt: skip
    assert safetensors_keys(tiny_decoder / "vae.safetensors") == set(listing("tangoflux_vae.safetensors.txt"))


def test_tiny_audiostory_has_the_published_names(tiny_audiostory_model):
    state = torch.load(tiny_audiostory_model / "pytorch_model.bin", map_location="meta", weights_only=True)
    assert patterns(state) == patterns(listing("audiostory_pytorch_model.txt"))
    vae = safetensors_keys(tiny_audiostory_model / "Flux_detokenizer" / "model.safetensors")
    assert vae == set(listing("tangoflux_vae.safetensors.txt"))  # the same Oobleck file as TangoFlux's
