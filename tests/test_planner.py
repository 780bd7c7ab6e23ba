"""Planner: story prompt -> validated Plan, through the real loader, with a tiny random Qwen2 checkpoint."""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest
import torch
import xgrammar as xgr

from audiostory_cli import planner as planner_module
from audiostory_cli.errors import ModelLoadError, ModelNotFoundError, PlanError
from audiostory_cli.planner import (
    LIMITS,
    Planner,
    fit_durations,
    max_answer_tokens,
    plan_from_answer,
    plan_prompt_messages,
    plan_schema,
    timeline,
)
from audiostory_cli.story import Plan, StoryRequest, plan_from_dict, plan_to_dict
from audiostory_cli.testing import build_tiny_planner

CPU = torch.device("cpu")
HARBOR = "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return"


@pytest.fixture(scope="session")
def planner(tiny_planner) -> Planner:
    """The tiny random planner (``tiny_planner`` in conftest.py: its folder, seed 0), loaded once."""
    return Planner.load(str(tiny_planner), device=CPU, dtype=torch.float32)


def assert_fills_total(plan: Plan, request: StoryRequest) -> None:
    """What a user checks in a plan: valid, back to back, ending exactly at the requested length."""
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan.prompt == request.prompt and plan.total_s == request.total_s
    assert 1 <= len(plan.events) <= request.max_events
    assert [e.index for e in plan.events] == list(range(len(plan.events)))
    assert all(e.layer == 0 for e in plan.events)
    assert all(e.caption == e.caption.strip() and len(e.caption) >= 3 for e in plan.events)
    floor = min(LIMITS.min_event_s, request.total_s / len(plan.events))
    assert all(e.duration_s >= floor - 1e-3 for e in plan.events)
    assert plan.events[0].start_s == 0.0
    for before, after in zip(plan.events, plan.events[1:]):
        assert after.start_s == pytest.approx(before.end_s, abs=1e-9)
    assert plan.events[-1].start_s + plan.events[-1].duration_s == request.total_s
    assert math.fsum(e.duration_s for e in plan.events) == pytest.approx(request.total_s, abs=1e-9)


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
    assert all(r.done % LIMITS.progress_every == 0 for r in reports[:-1])
    assert reports[-1].done == budget


@pytest.fixture(scope="module")
def plan_matcher(planner):
    """A fresh grammar matcher for the plan schema of a request, as the planner decodes under it."""
    info = xgr.TokenizerInfo.from_huggingface(planner.tokenizer, vocab_size=planner.model.config.vocab_size)
    compiler = xgr.GrammarCompiler(info)
    return lambda request: xgr.GrammarMatcher(
        compiler.compile_json_schema(json.dumps(plan_schema(request)), any_whitespace=False)
    )


def _answer(n_events=1, caption="x" * LIMITS.caption_max_chars, duration=1, reasoning="x" * LIMITS.reasoning_chars):
    event = {"caption": caption, "duration_s": duration, "tone": "x" * LIMITS.tone_chars}
    answer = {"reasoning": reasoning, "tone": "x" * LIMITS.tone_chars, "events": [event] * n_events}
    return json.dumps(answer, ensure_ascii=False)


def test_grammar_admits_the_longest_answer_within_the_token_budget(plan_matcher):
    request = StoryRequest(HARBOR, 7.3, max_events=5)
    longest = _answer(5, duration=8)
    matcher = plan_matcher(request)
    assert matcher.accept_string(longest) and matcher.is_completed()
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
    ],
)
def test_grammar_enforces_the_bounds(plan_matcher, answer):
    matcher = plan_matcher(StoryRequest(HARBOR, 7.3, max_events=5))
    assert not (matcher.accept_string(answer) and matcher.is_completed())


def _scripted_generate(monkeypatch, answers: list[str | None]) -> list[list[dict]]:
    """Replace the model's answers in order (None: let the model answer); returns the chats it got."""
    real = Planner._generate
    chats: list[list[dict]] = []

    def fake(self, messages, request, progress):
        chats.append(messages)
        answer = answers[len(chats) - 1]
        return real(self, messages, request, progress) if answer is None else answer

    monkeypatch.setattr(Planner, "_generate", fake)
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
    ],
)
def test_bad_answers_are_rejected_by_name(answer, message):
    with pytest.raises(PlanError, match=message):
        plan_from_answer(answer, StoryRequest(HARBOR, 10.0, max_events=2))


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
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system, request = messages[0]["content"], messages[-1]["content"]
    assert "describe what is HEARD, not what happens in the story" in system
    assert "waves break on pebbles" in system and "the hero feels relieved" in system
    assert "7.3 seconds" in request and "at most 5" in request
    assert HARBOR in request and "calm" in request
    example = json.loads(messages[2]["content"])  # the example answer is itself a valid plan for its request
    assert_fills_total(
        plan_from_answer(messages[2]["content"], planner_module.EXAMPLE_REQUEST), planner_module.EXAMPLE_REQUEST
    )
    assert sum(e["duration_s"] for e in example["events"]) == planner_module.EXAMPLE_REQUEST.total_s


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
    """Qwen2.5-Coder-1.5B-Instruct (Q4_K_M gguf) on CPU: 3+ events whose captions are sounds."""
    path = real_planner_gguf
    started = time.perf_counter()
    planner = Planner.load(path, device=CPU, dtype=torch.bfloat16)
    loaded = time.perf_counter()
    request = StoryRequest(HARBOR, 60.0)
    plan = planner.plan(request)
    print(f"load {loaded - started:.1f} s, plan {time.perf_counter() - loaded:.1f} s")
    print(json.dumps(plan_to_dict(plan), indent=2))
    assert_fills_total(plan, request)
    assert len(plan.events) >= 3
    captions = " ".join(e.caption.lower() for e in plan.events)
    heard = ("rain", "bell", "gull", "wave", "thunder", "wind", "ring", "drip", "cr", "splash", "patter", "roar")
    assert sum(word in captions for word in heard) >= 3, captions
    assert not any(word in captions for word in ("feel", "relieved", "happy", "sad", "thinks")), captions
