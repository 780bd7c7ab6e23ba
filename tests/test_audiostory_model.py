"""The released AudioStory checkpoint's loader and protocol, on a tiny random checkpoint in the same layout."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import one_thread
import torch

from audiostory_cli import pipeline, story
from audiostory_cli.decoders.base import ClipRequest
from audiostory_cli.models.audiostory import config as am_config
from audiostory_cli.models.audiostory import load as am
from audiostory_cli.models.audiostory import protocol as ap
from audiostory_cli.models.audiostory.fusion import AudioStoryConditioner
from audiostory_cli.settings import RenderOptions
from audiostory_cli.errors import ModelLoadError, ModelNotFoundError, PlanError
from audiostory_cli.story import Event, Plan, StoryRequest
from audiostory_cli.testing import AUDIOSTORY_LLM_PREFIX as LLM
from audiostory_cli.testing import audiostory_added_tokens

CPU = torch.device("cpu")
FAST = ap.GenerationLimits(reasoning_tokens=24)  # the tiny model rambles: keep its reasoning short
REQUEST = StoryRequest("rain on a tin roof, then thunder, then a dog barks", 9.5, seed=3, max_events=3)


@pytest.fixture(scope="module")
def tiny_audiostory(tiny_audiostory_model) -> Path:
    return tiny_audiostory_model


@pytest.fixture(scope="module")
def model(tiny_audiostory) -> am.AudioStoryModel:
    with one_thread():
        loaded = load(tiny_audiostory)
    loaded.planner.limits = FAST
    return loaded


@pytest.fixture(scope="module")
def generated(model):
    """One plan written by the model, and the generation behind it."""
    with one_thread():
        return model.planner.plan(REQUEST), model.planner.generate(REQUEST)


def load(path: Path) -> am.AudioStoryModel:
    return am.AudioStoryModel.load(str(path), device=CPU, dtype=torch.float32)


def variant(source: Path, target: Path, edit) -> Path:
    """A copy of the checkpoint whose pytorch_model.bin went through ``edit(state)``."""
    shutil.copytree(source, target)
    state = torch.load(target / "pytorch_model.bin")
    edit(state)
    torch.save(state, target / "pytorch_model.bin")
    return target


def llm_params(model: am.AudioStoryModel) -> dict[str, torch.Tensor]:
    return dict(model.planner.llm.state_dict())


# --- loading ----------------------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_every_key_into_the_model(model, tiny_audiostory):
    state = torch.load(tiny_audiostory / "pytorch_model.bin")
    ids = model.planner.ids
    base = len(state[LLM + "model.embed_tokens.weight"]) - len(audiostory_added_tokens())
    # protocol tokens: file order after the base vocabulary (map A); the ids in added_tokens.json are ignored
    assert [ids.think, ids.think_end, ids.gen, ids.gen_end] == [base + 610, base + 611, base + 608, base + 609]
    assert (ids.sem, ids.semantic[0], ids.res, ids.residual[0]) == (base + 4, base + 5, base + 105, base + 107)
    assert model.planner.tokenizer.get_vocab_size(with_added_tokens=True) == base + 612
    assert model.planner.repetition_penalty == 1.05
    assert (model.config.lora_r, model.config.num_semantic, model.config.num_residual) == (4, 64, 8)
    for module in (model.planner.llm, model.decoder.dit, model.fusion, model.semantic_projector):
        assert not any(t.is_meta for t in module.state_dict().values())
    prefix = "tangoflux."
    dit = {prefix + k: v for k, v in model.decoder.dit.state_dict().items()}
    assert all(torch.equal(v, state[k]) for k, v in dit.items())
    assert torch.equal(model.fusion.multihead_attention.in_proj_weight, state["multihead_attention.in_proj_weight"])
    assert torch.equal(model.residual_projector[2].bias, state["seedx.audio_projector.2.bias"])


@pytest.mark.parametrize(
    "key",
    [
        LLM + "model.layers.1.mlp.down_proj.weight",
        LLM + "model.layers.0.self_attn.q_proj.lora_B.default.weight",
        LLM + "model.norm.modules_to_save.default.weight",
        "seedx.projector.2.bias",
        "multihead_attention.out_proj.weight",
        "tangoflux.transformer.proj_out.weight",
    ],
)
def test_a_renamed_key_is_named_missing_and_its_new_name_unexpected(tiny_audiostory, tmp_path, key):
    renamed = key.replace("weight", "wieght").replace("bias", "bais")
    path = variant(tiny_audiostory, tmp_path / "ckpt", lambda state: state.__setitem__(renamed, state.pop(key)))
    with pytest.raises(ModelLoadError) as err:
        load(path)
    message = str(err.value)
    assert str(path / "pytorch_model.bin") in message
    assert f"1 missing: {key};" in message
    assert f"1 unexpected: {renamed}" in message


def test_an_extra_key_is_named_unexpected(tiny_audiostory, tmp_path):
    path = variant(
        tiny_audiostory, tmp_path / "ckpt", lambda state: state.__setitem__("seedx.extra.weight", torch.ones(2))
    )
    with pytest.raises(ModelLoadError, match=r"1 unexpected: seedx\.extra\.weight") as err:
        load(path)
    assert "missing" not in str(err.value)


def test_many_missing_keys_are_counted_not_all_listed(tiny_audiostory, tmp_path):
    def drop_projectors(state):
        for key in [k for k in state if k.startswith(("seedx.projector.", "seedx.audio_projector."))]:
            del state[key]

    with pytest.raises(ModelLoadError, match=r"8 missing: seedx\.audio_projector\.0\.bias, .* \(\+3 more\)"):
        load(variant(tiny_audiostory, tmp_path / "ckpt", drop_projectors))


def test_a_wrong_lora_rank_is_a_load_error(tiny_audiostory, tmp_path):
    yaml_text = (tiny_audiostory / "config.yaml").read_text().replace("r: 4", "r: 8")
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_audiostory, path)
    (path / "config.yaml").write_text(yaml_text)
    with pytest.raises(ModelLoadError, match=r"wrong shape: .*lora_A\.default\.weight .*r = 8 in config\.yaml"):
        load(path)


def test_lora_is_merged_with_alpha_over_r(model, tiny_audiostory):
    state = torch.load(tiny_audiostory / "pytorch_model.bin")
    module = "model.layers.1.self_attn.v_proj"
    a, b = state[f"{LLM}{module}.lora_A.default.weight"], state[f"{LLM}{module}.lora_B.default.weight"]
    expected = state[f"{LLM}{module}.weight"] + b @ a * (8.0 / 4)
    merged = llm_params(model)[module + ".weight"]
    assert torch.allclose(merged, expected, atol=1e-6)
    assert not torch.allclose(merged, state[f"{LLM}{module}.weight"] + b @ a, atol=1e-3)  # the scale matters
    assert torch.equal(llm_params(model)[module + ".bias"], state[f"{LLM}{module}.bias"])


def test_new_peft_key_style_loads_to_the_same_merged_weights(model, tiny_audiostory, tmp_path):
    def to_new_style(state):
        for key in list(state):
            module, _, param = key.rpartition(".")
            if module.rsplit(".", 1)[-1] in am_config.AudioStoryConfig.target_modules and "lora_" not in key:
                state[f"{module}.base_layer.{param}"] = state.pop(key)

    new = load(variant(tiny_audiostory, tmp_path / "ckpt", to_new_style))
    old_params, new_params = llm_params(model), llm_params(new)
    assert old_params.keys() == new_params.keys()
    assert all(torch.equal(old_params[k], new_params[k]) for k in old_params)


def test_a_weight_under_both_key_styles_is_unexpected(tiny_audiostory, tmp_path):
    key = LLM + "model.layers.0.mlp.up_proj.weight"
    twice = key.replace(".weight", ".base_layer.weight")
    path = variant(tiny_audiostory, tmp_path / "ckpt", lambda state: state.__setitem__(twice, state[key].clone()))
    with pytest.raises(ModelLoadError, match="1 unexpected: "):
        load(path)


def test_modules_to_save_default_wins_over_original_module(model, tiny_audiostory):
    state = torch.load(tiny_audiostory / "pytorch_model.bin")
    params = llm_params(model)
    for name in ("model.norm", "model.layers.1.post_attention_layernorm"):
        assert torch.equal(params[name + ".weight"], state[f"{LLM}{name}.modules_to_save.default.weight"])
        assert not torch.equal(params[name + ".weight"], state[f"{LLM}{name}.original_module.weight"])


@pytest.mark.parametrize("drop", ["lm_head.weight", "model.embed_tokens.weight"])
def test_the_tied_embedding_loads_from_either_name(model, tiny_audiostory, tmp_path, drop):
    one = load(variant(tiny_audiostory, tmp_path / "ckpt", lambda state: state.pop(LLM + drop)))
    llm = one.planner.llm
    assert llm.lm_head.weight is llm.model.embed_tokens.weight
    assert torch.equal(llm.lm_head.weight, model.planner.llm.lm_head.weight)


def test_both_embedding_names_missing_is_a_load_error(tiny_audiostory, tmp_path):
    def drop_both(state):
        state.pop(LLM + "lm_head.weight")
        state.pop(LLM + "model.embed_tokens.weight")

    with pytest.raises(ModelLoadError, match="no seedx.llm.base_model.model.model.embed_tokens.weight"):
        load(variant(tiny_audiostory, tmp_path / "ckpt", drop_both))


def test_t5_weights_in_the_file_replace_the_folders(model, tiny_audiostory, tmp_path):
    t5 = {k: v + 1.0 for k, v in model.decoder.text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}

    def add_t5(state, extra=False):
        for key in [k for k in state if k.startswith("tangoflux.text_encoder.")]:  # the file's own T5, both names
            del state[key]
        state.update({"tangoflux.text_encoder." + k: v for k, v in t5.items()})
        if extra:
            state["tangoflux.text_encoder.extra"] = t5["shared.weight"]

    loaded = load(variant(tiny_audiostory, tmp_path / "ckpt", add_t5)).decoder.text_encoder
    assert torch.equal(loaded.shared.weight, t5["shared.weight"])
    assert torch.equal(loaded.encoder.embed_tokens.weight, t5["shared.weight"])  # tied: one name is enough
    with pytest.raises(ModelLoadError, match=r"1 unexpected: tangoflux\.text_encoder\.extra"):
        load(variant(tiny_audiostory, tmp_path / "bad", lambda state: add_t5(state, extra=True)))


def test_keys_of_modules_config_yaml_declares_are_accepted(tiny_audiostory, tmp_path):
    key = "seedx.whisper_resampler_llava.aud_projector.0.weight"
    path = variant(tiny_audiostory, tmp_path / "ckpt", lambda state: state.__setitem__(key, torch.ones(2, 2)))
    with pytest.raises(ModelLoadError, match=f"1 unexpected: {key}"):
        load(path)
    config = (path / "config.yaml").read_text()
    declared = "whisper_resampler_llava:\n    _target_: src.models.tokenizer.modeling_whisper.WhisperResampler"
    (path / "config.yaml").write_text(config.replace("whisper_resampler_llava: null", declared))
    assert load(path).ref == str(path)


def test_legacy_token_order_is_one_switch_away(tiny_audiostory, monkeypatch):
    names = list(audiostory_added_tokens())
    legacy = ap.token_order(names, audiostory_added_tokens(), "legacy")
    assert legacy[:100] == [f"<t5_{i:05d}>" for i in range(100)]
    assert legacy[100:106] == ["<t5>", "</t5>", "<|/think|>", "<video_padding>", "</timestamp>", "<timestamp>"]
    assert legacy[-3:] == ["<|gen|>", "<|/gen|>", "<|think|>"] and sorted(legacy) == sorted(names)
    monkeypatch.setattr(ap, "TOKEN_ORDER", "legacy")
    tokenizer = ap.load_tokenizer(tiny_audiostory / "tokenizer")
    base = tokenizer.get_vocab_size(with_added_tokens=True) - len(names)
    assert tokenizer.token_to_id("<|think|>") == base + 611
    assert tokenizer.token_to_id("<t5_00000>") == base


def test_missing_files_name_the_layout(tiny_audiostory, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_audiostory, path)
    (path / "Flux_detokenizer" / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"lacks Flux_detokenizer/model\.safetensors .*pytorch_model\.bin"):
        load(path)
    shutil.copy(tiny_audiostory / "Flux_detokenizer" / "model.safetensors", path / "Flux_detokenizer")
    (path / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights file \(pytorch_model\.bin or "):
        load(path)


def test_a_missing_base_llm_config_names_the_folder(tiny_audiostory, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_audiostory, path)
    shutil.rmtree(path / "Qwen2.5-3B-Instruct")
    with pytest.raises(ModelLoadError, match=r"lacks Qwen2\.5-3B-Instruct/config\.json"):
        load(path)


# --- the generation protocol -------------------------------------------------------------------------------


def test_every_clip_gets_exactly_its_query_tokens(model, generated):
    plan, generation = generated
    ids, tokens = model.planner.ids, list(generation.states.tokens)
    n_sem, n_res = len(ids.semantic), len(ids.residual)
    opened = [i for i, t in enumerate(tokens) if t == ids.sem]
    assert 1 <= len(opened) == len(generation.clips) == len(plan.events) <= REQUEST.max_events
    assert tokens.count(ids.gen) == tokens.count(ids.gen_end) == len(opened)
    for start in opened:
        run = tokens[start : start + n_sem + n_res + 5]
        assert run == [ids.sem, *ids.semantic, ids.sem_end, ids.res, *ids.residual, ids.res_end, ids.gen_end]
    assert sum(t in ids.semantic for t in tokens) == n_sem * len(opened)
    assert sum(t in ids.residual for t in tokens) == n_res * len(opened)
    assert generation.states.semantic.shape == (len(opened), n_sem, model.planner.llm.config.hidden_size)
    assert generation.states.residual.shape == (len(opened), n_res, model.planner.llm.config.hidden_size)


def test_the_query_states_reach_the_fusion(model, generated, monkeypatch):
    plan, generation = generated
    ids, tokens = model.planner.ids, list(generation.states.tokens)
    # 1. While generating, the states are taken at exactly the query positions (found independently here:
    #    one forward pass over the prompt and the whole answer).
    prompt = model.planner.prompt_ids(REQUEST.prompt, REQUEST.total_s)
    sequence = prompt + [t for t in tokens if t not in ids.eos]
    with torch.inference_mode():
        hidden = model.planner.llm.model(input_ids=torch.tensor([sequence])).last_hidden_state[0]
    sem_at = [len(prompt) + i for i, t in enumerate(tokens) if t in ids.semantic]
    res_at = [len(prompt) + i for i, t in enumerate(tokens) if t in ids.residual]
    clips = len(plan.events)
    torch.testing.assert_close(generation.states.semantic, hidden[sem_at].reshape(clips, len(ids.semantic), -1),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(generation.states.residual, hidden[res_at].reshape(clips, len(ids.residual), -1),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    # 2. What conditions the clips: the plan's (teacher-forced) query states, projected, into the fusion.
    seen = []
    forward = model.fusion.forward
    monkeypatch.setattr(model.fusion, "forward", lambda s, r: seen.append((s, r)) or forward(s, r))
    texts = model.event_texts(plan)
    ((semantic, residual),) = seen
    states = model.planner.query_states(plan)
    with torch.inference_mode():
        expected_sem = model.semantic_projector(states.semantic)
        expected_res = model.residual_projector(states.residual)
    assert semantic.shape == (clips, 64, 32) and residual.shape == (clips, 8, 32)
    assert torch.allclose(semantic, expected_sem, atol=1e-5) and torch.allclose(residual, expected_res, atol=1e-5)
    fused = model.fusion(semantic, residual)
    assert all(torch.allclose(texts[e.index].states, fused[i]) for i, e in enumerate(plan.events))


def test_fusion_adds_attention_back_and_divides_by_the_feature_scale(model):
    semantic, residual = torch.randn(2, 64, 32), torch.randn(2, 8, 32)
    with torch.inference_mode():
        fused = model.fusion(semantic, residual)
        mha = model.fusion.multihead_attention
        one = mha(semantic[1][:, None], residual[1][:, None], residual[1][:, None])[0][:, 0]  # clip 1 alone
    assert torch.allclose(fused[1], (semantic[1] + one) / 10.0, atol=1e-6)


def test_a_generation_that_never_opens_a_clip_is_a_plan_error(model, monkeypatch):
    choose = model.planner._choose
    gen = model.planner.ids.gen

    def never_gen(scores, allowed):
        allowed = allowed.clone()
        allowed[gen] = False
        return choose(scores, allowed)

    monkeypatch.setattr(model.planner, "_choose", never_gen)
    with pytest.raises(PlanError, match=r"stopped after \d+ tokens without opening a clip \(no <\|gen\|>"):
        model.planner.plan(REQUEST)


def test_a_model_that_writes_on_without_a_clip_runs_out_of_budget(model, monkeypatch):
    text = int(torch.nonzero(model.planner.vocab.text)[0])
    think_end = model.planner.ids.think_end
    monkeypatch.setattr(model.planner, "_choose", lambda scores, allowed: think_end if allowed[think_end] else text)
    monkeypatch.setattr(model.planner, "limits", replace(FAST, max_new_tokens=300))
    with pytest.raises(PlanError, match=r"ran out of its token budget after \d+ tokens without opening a clip"):
        model.planner.plan(REQUEST)


# --- plans and rendering ---------------------------------------------------------------------------------------


def test_plan_is_valid_and_exactly_as_long_as_asked(model, generated):
    plan, generation = generated
    assert story.plan_from_dict(story.plan_to_dict(plan)) == plan
    assert plan.events[0].start_s == 0 and plan.events[-1].end_s == REQUEST.total_s
    for before, after in zip(plan.events, plan.events[1:]):
        assert after.start_s == pytest.approx(before.end_s, abs=1e-9)
    assert [e.caption for e in plan.events] == [c.caption for c in generation.clips]
    assert plan.reasoning and plan.reasoning == generation.reasoning
    assert model.planner.plan(REQUEST) == plan  # greedy: the same request, the same plan


def test_event_texts_one_per_event_computed_once(model, generated):
    plan, _ = generated
    texts = model.event_texts(plan)
    assert sorted(texts) == [e.index for e in plan.events]
    for tokens in texts.values():
        assert tokens.states.shape == (64, 32) and tokens.pooled.shape == (32,)
        assert torch.isfinite(tokens.states).all()
    assert model.planner.query_states(plan) is model.planner.query_states(plan)  # cached by the plan's content
    again = model.event_texts(replace(plan, render=None, tone="other"))
    assert all(torch.equal(again[i].states, texts[i].states) for i in texts)


def test_a_hand_written_plan_is_teacher_forced(model):
    events = (
        Event(0, "waves break on pebbles", 0.0, 3.0, "calm"),
        Event(1, "a wooden door creaks open", 3.0, 2.5),
        Event(2, "wind over the dunes", 0.0, 5.5, layer=1),
    )
    plan = Plan("a calm shore", 5.5, events, reasoning="waves, a door, wind")
    texts = model.event_texts(plan)
    assert sorted(texts) == [0, 1, 2] and texts[1].states.shape == (64, 32)
    states = model.planner.query_states(plan)
    assert states.tokens == () and states.semantic.shape[:2] == (3, 64)
    assert torch.equal(model.event_texts(plan)[2].states, texts[2].states)  # deterministic
    edited = replace(plan, events=(replace(events[0], caption="rain on a tin roof"), *events[1:]))
    assert not torch.equal(model.event_texts(edited)[0].states, texts[0].states)


def test_rendering_a_plan_with_its_event_texts(model, monkeypatch):
    request = StoryRequest("a kettle whistles, then a cup clinks", 3.0, seed=5, max_events=2)
    plan = model.planner.plan(request)
    texts = model.event_texts(plan)
    seen: list[ClipRequest] = []
    render = model.decoder.render
    monkeypatch.setattr(model.decoder, "render", lambda requests, *a, **kw: seen.extend(requests) or render(requests, *a, **kw))
    options = RenderOptions(steps=2, continuation=True, crossfade_s=0.5, seed=request.seed, model=model.ref)
    track = pipeline.render_plan(model.decoder, plan, options, AudioStoryConditioner(model)).track
    assert track.wave.shape == (2, round(3.0 * 44100)) and track.sample_rate == 44100
    assert all(torch.equal(r.text.states, texts[e.index].states) for r, e in zip(seen, plan.events, strict=True))
    assert [r.seed for r in seen] == [story.clip_seed(5, e.index) for e in plan.events]
    assert abs(track.wave).max() > 0
