"""The JSON-plan core (planners.base) and the transformers engine: story prompt -> validated Plan, through the
real loader, with a tiny random Qwen2 checkpoint. Every engine's contract: test_planner_engines.py."""

from __future__ import annotations

import json
import math
import shutil
import time
import zlib

import llguidance
import numpy as np
import pytest
import torch

from audiostory_cli.errors import ModelLoadError, ModelNotFoundError, PlanError
from audiostory_cli.planners import base as planner_module
from audiostory_cli.planners import grammar
from audiostory_cli.planners import load_planner
from audiostory_cli.planners.base import (
    LIMITS,
    fit_durations,
    has_ambience,
    max_answer_tokens,
    plan_from_answer,
    plan_prompt_messages,
    plan_schema,
    timeline,
)
from audiostory_cli.planners.grammar import decode_json, json_grammar
from audiostory_cli.planners.transformers import TransformersEngine
from audiostory_cli.planners.transformers import TransformersPlanner as Planner
from audiostory_cli.story import (
    Plan,
    Progress,
    StoryRequest,
    no_progress,
    plan_from_dict,
    plan_to_dict,
)
from audiostory_cli.testing import build_tiny_planner

CPU = torch.device("cpu")
HARBOR = "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return"


@pytest.fixture(scope="session")
def planner(tiny_planner) -> Planner:
    """The tiny random planner (``tiny_planner`` in conftest.py: its folder, seed 0), loaded once."""
    return Planner.load(str(tiny_planner), device=CPU, dtype=torch.float32)


def assert_fills_total(plan: Plan, request: StoryRequest) -> None:
    """What a user checks in a plan: valid, foreground events back to back and ending exactly at the requested
    length, the ambience bed (layer 1) inside the story, each clip no longer than the decoder renders."""
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan.prompt == request.prompt and plan.total_s == request.total_s
    foreground = plan.foreground()
    assert 1 <= len(foreground) <= request.max_events
    assert [e.index for e in plan.events] == list(range(len(plan.events)))
    assert foreground == [e for e in plan.events if e.layer == 0]  # the foreground comes first, in story order
    assert all(e.caption == e.caption.strip() and len(e.caption) >= 3 for e in plan.events)
    floor = min(LIMITS.min_event_s, request.total_s / len(foreground))
    assert all(e.duration_s >= floor - 1e-3 for e in foreground)
    assert foreground[0].start_s == 0.0
    for before, after in zip(foreground, foreground[1:]):
        assert after.start_s == pytest.approx(before.end_s, abs=1e-9)
    assert foreground[-1].start_s + foreground[-1].duration_s == request.total_s
    assert math.fsum(e.duration_s for e in foreground) == pytest.approx(request.total_s, abs=1e-9)
    beds = [e for e in plan.events if e.layer > 0]
    assert {e.layer for e in beds} <= ({1} if has_ambience(request) else set())
    assert all(e.end_s <= request.total_s + 1e-9 for e in beds)
    if request.max_event_s is not None:
        assert all(e.duration_s <= request.max_event_s + 1e-3 for e in plan.events)


@pytest.mark.parametrize(
    "request_",
    [
        StoryRequest(HARBOR, 60.0),
        StoryRequest("a wooden door creaks, footsteps, silence", 7.3, max_events=5),
        StoryRequest("a long night in the forest until dawn", 600.0),
        StoryRequest("rain on a tin roof", 30.0, max_events=1),
        StoryRequest("a train passes a level crossing", 12.0, seed=3, tone="ominous", max_events=3),
    ],
    ids=["harbor-60s", "door-7.3s-5max", "forest-600s", "rain-1max", "train-ominous"],
)
def test_plan_validates_and_fills_the_total(planner, request_):
    plan = planner.plan(request_)
    assert_fills_total(plan, request_)
    if request_.tone:
        assert plan.tone == request_.tone


def test_same_request_gives_the_same_plan(planner):
    request = StoryRequest(HARBOR, 45.0, max_events=4)
    assert planner.plan(request) == planner.plan(request)


def test_progress_reports_tokens_against_the_budget(planner):
    request = StoryRequest(HARBOR, 20.0, max_events=3)
    reports = []
    planner.plan(request, progress=reports.append)
    budget = max_answer_tokens(request)
    assert {r.stage for r in reports} == {"plan"} and {r.total for r in reports} == {budget}
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    steps = [b.done - a.done for a, b in zip([Progress("plan", 0, budget)] + reports[:-2], reports[:-1])]
    assert steps and all(step >= LIMITS.progress_every for step in steps)  # a report every 8+ tokens
    assert reports[-1].done == budget


@pytest.fixture(scope="module")
def accepts(planner):
    """Whether the plan grammar of a request (llguidance, as the planner decodes under it) takes a whole text."""
    vocab = planner.engine._vocab

    def check(request: StoryRequest, text: str) -> bool:
        matcher = llguidance.LLMatcher(vocab, json_grammar(plan_schema(request)), log_level=0)
        return matcher.consume_tokens(vocab.tokenize_str(text)) and matcher.is_accepting()

    return check


def _answer(n_events=1, caption="x" * LIMITS.caption_max_chars, duration=1, reasoning="x" * LIMITS.reasoning_chars,
            ambience="", setting="a harbor at dawn"):  # fmt: skip
    event = {"caption": caption, "duration_s": duration, "tone": "x" * LIMITS.tone_chars}
    answer = {"reasoning": reasoning, "tone": "x" * LIMITS.tone_chars, "events": [event] * n_events,
              "setting": setting, "background_sound": ambience}  # fmt: skip
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def test_grammar_admits_the_longest_answer_within_the_token_budget(accepts):
    request = StoryRequest(HARBOR, 7.3, max_events=5)
    longest = _answer(5, duration=8, ambience="x" * LIMITS.caption_max_chars, setting="x" * LIMITS.setting_chars)
    assert accepts(request, longest)
    assert len(longest) + 1 == max_answer_tokens(request)  # every token adds a byte; + the stop token


@pytest.mark.parametrize(
    "answer",
    [
        _answer(6),  # more events than max_events
        _answer(caption="x" * (LIMITS.caption_max_chars + 1)),
        _answer(caption="ab"),  # shorter than 3 characters
        _answer(caption=" waves"),  # must start with a letter
        _answer(caption="waves "),  # must not end with a space
        _answer(caption='a \\"quoted\\" wave'),  # no escapes: one byte per character
        _answer(caption="café noise"),  # printable ASCII only, raw UTF-8 too
        _answer(reasoning="x" * (LIMITS.reasoning_chars + 1)),
        _answer(duration=0),
        _answer(duration=9),  # above ceil(total_s)
        _answer(duration=2.5),  # whole seconds
        _answer(ambience="ab"),  # the ambience is a caption or ""
        _answer(ambience=" rain"),
        _answer().replace(',"background_sound":""', ""),  # always written, "" or not
        _answer(setting=""),  # the place comes first, in a few words
        _answer(setting="x" * (LIMITS.setting_chars + 1)),
        _answer().replace('"setting":"a harbor at dawn",', ""),
        json.dumps(json.loads(_answer())),  # spaced: the answer is written as the examples are
    ],
    ids=[
        "6-events",
        "caption-121",
        "caption-2",
        "caption-space-first",
        "caption-space-last",
        "escape",
        "non-ascii",
        "reasoning-301",
        "duration-0",
        "duration-9",
        "duration-float",
        "ambience-2",
        "ambience-space-first",
        "no-ambience",
        "setting-empty",
        "setting-61",
        "no-setting",
        "spaced",
    ],
)
def test_grammar_enforces_the_bounds(accepts, answer):
    request = StoryRequest(HARBOR, 7.3, max_events=5)
    assert accepts(request, _answer()) and accepts(request, _answer(ambience="steady rain"))  # within the bounds
    assert not accepts(request, answer)


def _scripted_generate(monkeypatch, answers: list[str | None]) -> list[list[dict]]:
    """Replace the model's answers in order (None: let the model answer); returns the chats it got."""
    real = TransformersEngine.complete
    chats: list[list[dict]] = []

    def fake(self, messages, schema, *, max_tokens, progress):
        chats.append(messages)
        answer = answers[len(chats) - 1]
        return real(self, messages, schema, max_tokens=max_tokens, progress=progress) if answer is None else answer

    monkeypatch.setattr(TransformersEngine, "complete", fake)
    return chats


def test_invalid_answer_is_retried_with_the_error(planner, monkeypatch):
    chats = _scripted_generate(monkeypatch, ["not json", None])
    request = StoryRequest(HARBOR, 30.0)
    assert_fills_total(planner.plan(request), request)
    assert len(chats) == 2
    first = plan_prompt_messages(request)
    assert chats[0] == first and chats[1][: len(first)] == first
    assert chats[1][len(first)] == {"role": "assistant", "content": "not json"}
    retry = chats[1][len(first) + 1]
    assert retry["role"] == "user" and "not valid JSON" in retry["content"]


def test_two_invalid_answers_raise_plan_error(planner, monkeypatch):
    bad = json.dumps({"reasoning": "", "tone": "calm", "events": [{"caption": "rain", "duration_s": 0}]})
    chats = _scripted_generate(monkeypatch, [bad, bad])
    with pytest.raises(PlanError, match=r"no valid plan in 2 tries.*events\[0\]\.duration_s = 0: must be a number > 0"):
        planner.plan(StoryRequest(HARBOR, 30.0))
    assert len(chats) == 2


@pytest.mark.parametrize(
    "answer, message",
    [
        ('{"events": [', "not valid JSON"),
        ('["rain"]', "events list has 1 to 2 entries"),
        ('{"events": []}', "events list has 1 to 2 entries"),
        (json.dumps({"events": [{"caption": c, "duration_s": 1} for c in "abc"]}), "events list has 1 to 2 entries"),
        ('{"events": [{"duration_s": 3}]}', r"events\[0\] must be an object with a caption"),
        ('{"events": [{"caption": "rain", "duration_s": true}]}', r"events\[0\]\.duration_s = true"),
        ('{"events": [{"caption": "   ", "duration_s": 3}]}', r"events\[0\]\.caption has 0 characters"),
        ('```json\n{"background_sound": 7, "events": [{"caption": "rain", "duration_s": 3}]}\n```',
         r"background_sound = 7: must be"),
    ],
)
def test_bad_answers_are_rejected_by_name(answer, message):
    with pytest.raises(PlanError, match=message):
        plan_from_answer(answer, StoryRequest(HARBOR, 10.0, max_events=2))


def test_too_few_events_for_the_longest_clip_are_rejected():
    """What an unconstrained server may send: 2 events for a 60 s story whose clips last at most 28.9 s."""
    answer = json.dumps({"events": [{"caption": "rain", "duration_s": 30}, {"caption": "gulls", "duration_s": 30}]})
    with pytest.raises(PlanError, match="has 2 events: a 60 s story needs at least 3"):
        plan_from_answer(answer, StoryRequest(HARBOR, 60.0, max_event_s=28.9))


def test_answer_durations_are_rescaled_to_the_total():
    answer = {
        "reasoning": " a storm ",
        "tone": "tense",
        "events": [
            {"caption": " rain on a tin roof ", "duration_s": 3, "tone": "calm"},
            {"caption": "thunder cracks", "duration_s": 1, "tone": "tense"},
            {"caption": "gulls cry", "duration_s": 100, "tone": "hopeful"},
        ],
    }
    request = StoryRequest(HARBOR, 7.3, max_events=5)
    plan = plan_from_answer(json.dumps(answer), request)
    assert_fills_total(plan, request)
    assert [e.caption for e in plan.events] == ["rain on a tin roof", "thunder cracks", "gulls cry"]
    assert [e.duration_s for e in plan.events][:2] == [0.5, 0.5]  # raised to the floor, not dropped
    assert plan.reasoning == "a storm" and plan.tone == "tense"


def test_the_ambience_lies_under_the_whole_story_in_clips_the_decoder_can_render():
    answer = {"events": [{"caption": f"sound {i}", "duration_s": 16} for i in range(5)], "background_sound": " steady  rain "}
    request = StoryRequest(HARBOR, 80.0, max_event_s=28.9)
    plan = plan_from_answer(json.dumps(answer), request)
    assert_fills_total(plan, request)
    bed = [e for e in plan.events if e.layer == 1]
    assert {e.caption for e in bed} == {"steady rain"} and len(bed) == 3  # 80 s in clips of <= 28.9 s
    assert bed[0].start_s == 0.0 and bed[-1].end_s == 80.0
    for before, after in zip(bed, bed[1:]):  # back to back on their layer: they crossfade into one bed
        assert after.start_s == pytest.approx(before.end_s, abs=1e-9)
    answer["background_sound"] = ""
    assert all(e.layer == 0 for e in plan_from_answer(json.dumps(answer), request).events)


def test_no_ambience_when_the_plan_would_pass_the_event_limit():
    request = StoryRequest(HARBOR, 600.0, max_events=64, max_event_s=9.9)
    assert not has_ambience(request) and "background_sound" not in plan_schema(request)["properties"]
    assert all("background_sound" not in m["content"] for m in plan_prompt_messages(request))
    assert all('"setting"' not in m["content"] for m in plan_prompt_messages(request))
    assert has_ambience(StoryRequest(HARBOR, 60.0, max_event_s=28.9))


def test_fit_durations_keeps_proportions_above_the_floor():
    sizes = fit_durations([1, 2, 3, 0.001], 60.0)
    assert sizes[3] == 0.5 and math.fsum(sizes) == pytest.approx(60.0)
    assert sizes[1] / sizes[0] == pytest.approx(2) and sizes[2] / sizes[0] == pytest.approx(3)
    assert fit_durations([5, 1, 1, 1, 1, 1, 1, 1], 1.0) == pytest.approx([0.125] * 8)  # floor = total / n


def test_fit_durations_caps_events_at_the_longest_clip():
    sizes = fit_durations([10, 1, 1, 1], 100.0, max_event_s=28.9)
    assert sizes[0] == 28.9 and sizes[1:] == pytest.approx([71.1 / 3] * 3)
    assert fit_durations([1, 9, 1, 1], 100.0, max_event_s=25.0) == pytest.approx([25.0] * 4)
    capped = fit_durations([0.001, 50, 50], 60.0, max_event_s=29.0)
    assert capped == pytest.approx([2.0, 29.0, 29.0]) and math.fsum(capped) == pytest.approx(60.0)


def test_long_story_gets_enough_events_that_each_fit_one_clip(planner):
    request = StoryRequest(HARBOR, 100.0, max_events=8, max_event_s=28.9)
    plan = planner.plan(request)
    assert_fills_total(plan, request)
    assert len(plan.events) >= 4
    assert all(e.duration_s <= 28.9 + 1e-3 for e in plan.events)


def test_timeline_ends_exactly_at_the_total():
    for total in (7.3, 600.0, 0.1, 59.999, 1 / 3):
        sizes = fit_durations([1.0, 2.0, 3.0, 1.5, 7.0], total)
        placed = timeline(sizes, total)
        assert placed[-1][0] + placed[-1][1] == total
        assert all(d > 0 for _, d in placed)


def test_messages_ask_for_sounds_heard_and_the_total():
    messages = plan_prompt_messages(StoryRequest(HARBOR, 7.3, max_events=5, tone="calm"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    system, request = messages[0]["content"], messages[-1]["content"]
    assert "describe what is HEARD, not what happens in the story" in system
    assert "waves break on pebbles" in system and "the hero feels relieved" in system
    assert request == f"Story: {HARBOR}\nLength: 7.3 seconds, 3 events.\nTone: calm."  # 3: the fewest suggested
    untoned = plan_prompt_messages(StoryRequest(HARBOR, 60.0, max_events=5))[-1]["content"]
    assert untoned == f"Story: {HARBOR}\nLength: 60 seconds, 4 events."  # one per 15 s; the model picks the tone
    assert "setting, written after the events, is where the story happens" in system
    assert "background_sound is a caption too" in system
    for (example, answer), shown in zip(planner_module.EXAMPLES, (messages[2], messages[4])):
        assert json.loads(shown["content"]) == answer  # each example answer is a valid plan for its request
        assert_fills_total(plan_from_answer(shown["content"], example), example)
        assert sum(e["duration_s"] for e in answer["events"]) == example.total_s
    assert [bool(answer["background_sound"]) for _, answer in planner_module.EXAMPLES] == [True, False]


@pytest.mark.parametrize("seed", range(4))
def test_stretches_the_grammar_spells_out_skip_the_model_and_leave_the_text_as_it_was(planner, monkeypatch, seed):
    """Where the grammar forces the next bytes and allows only pieces of them (``":"`` after a key), the
    token is written without a model call. A model whose logits depend on the text alone writes the same
    plan with and without that, in fewer calls; an ambience that may be "" is still the model's choice."""
    vocab, request = planner.engine._vocab, StoryRequest(HARBOR, 30.0, max_events=4)
    schema, prompt = plan_schema(request), [planner.tokenizer.eos_token_id]

    def decode(calls: list[int]) -> str:
        written: list[int] = []

        def next_logits(ids):
            written.extend(ids)
            calls.append(len(ids))
            text = vocab.decode_bytes(written[1:])  # the answer so far, however it was split into tokens
            return np.random.default_rng([seed, zlib.crc32(text)]).standard_normal(vocab.vocab_size)

        return decode_json(next_logits, prompt, vocab, schema, ref="m", budget=4000, progress=no_progress)

    spelled, plain = [], []
    answer = decode(spelled)
    monkeypatch.setattr(grammar, "_spelled_out", lambda *args: None)
    assert decode(plain) == answer
    assert_fills_total(plan_from_answer(answer, request), request)
    assert len(spelled) < len(plain)  # fewer model calls


def test_missing_planner_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-planner"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        Planner.load(str(missing), device=CPU, dtype=torch.float32)


def test_model_without_chat_template_is_refused(tiny_planner, tmp_path):
    folder = shutil.copytree(tiny_planner, tmp_path / "base-model")
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="has no chat template"):
        Planner.load(str(folder), device=CPU, dtype=torch.float32)


def test_unloadable_folder_is_a_load_error_naming_the_path(tiny_planner, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(tiny_planner / "config.json", folder / "config.json")
    with pytest.raises(ModelLoadError, match=f"cannot load the planner .* from {folder}"):
        Planner.load(str(folder), device=CPU, dtype=torch.float32)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        Planner.load(str(weights), device=CPU, dtype=torch.float32)


def test_tiny_planner_is_deterministic_and_leaves_the_global_rng(tiny_planner, tmp_path):
    state = torch.get_rng_state()
    again = build_tiny_planner(tmp_path / "again", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_planner / name).read_bytes()


@pytest.mark.slow
def test_real_planner_plans_sounds(real_planner_gguf):
    """Qwen2.5-Coder-1.5B-Instruct (Q4_K_M gguf) on CPU through llama.cpp: 3+ events whose captions are sounds."""
    pytest.importorskip("llama_cpp", reason='the llama extra is not installed: pip install -e ".[llama]"')
    path = real_planner_gguf
    started = time.perf_counter()
    planner = load_planner(path, device=CPU, dtype=torch.bfloat16)
    loaded = time.perf_counter()
    request = StoryRequest(HARBOR, 60.0)
    plan = planner.plan(request)
    print(f"load {loaded - started:.1f} s, plan {time.perf_counter() - loaded:.1f} s")
    print(json.dumps(plan_to_dict(plan), indent=2))
    assert_fills_total(plan, request)
    assert len(plan.events) >= 3
    captions = " ".join(e.caption.lower() for e in plan.foreground())
    heard = ("rain", "bell", "gull", "wave", "thunder", "wind", "ring", "drip", "cr", "splash", "patter", "roar")
    assert sum(word in captions for word in heard) >= 3, captions
    assert not any(word in captions for word in ("feel", "relieved", "happy", "sad", "thinks")), captions
