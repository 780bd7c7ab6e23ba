"""Benchmark: how good the plans of a real planner are, on 10 story prompts written for this check.

Each prompt is planned once through ``load_planner`` (a ``.gguf`` file: llama.cpp) with the request the CLI
sends for TangoFlux (events of at most 28.9 s), and scored on what a sound designer checks first:

- valid: a plan came back (the JSON core's validation and one retry passed);
- sum: the foreground durations add up to the requested length exactly;
- sounds: captions (the foreground's and the bed's) that name something heard (a sound word) and no plot or
  feeling ("feels", "decides");
- distinct: no caption repeated on the foreground;
- tone: the plan's tone is one of the moods the prompt calls for;
- beds: the story's ambience as a bed (layer 1) that fits, when the story has a lasting background (rain,
  wind, a crowd, an engine: its caption names a sound, holds one of the case's words and not the prompt
  example's), none when it has not.

One row per prompt on stdout as a markdown table, then every plan's events; ``--out`` writes the same to a
file. Data flow: ``PROMPTS -> planner.plan(StoryRequest) -> Plan -> scores -> table``.

    python benchmarks/plan_quality.py --out benchmarks/plan_quality.md      # the real 1.5B GGUF (downloads once)
    python benchmarks/plan_quality.py --planner model.gguf --threads 1
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from audiostory_cli.errors import AudiostoryError
from audiostory_cli.planners import load_planner
from audiostory_cli.story import Plan, StoryRequest

REAL_PLANNER_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "real-planner-gguf"
LONGEST_CLIP_S = 28.9  # TangoFlux's longest event at the default 1 s crossfade: the request the CLI sends


@dataclass(frozen=True)
class Case:
    """One story prompt and what its plan should show."""

    prompt: str  # the story
    total_s: float  # its length
    moods: tuple[str, ...]  # tone words that fit it (a plan tone containing one of them fits)
    beds: tuple[str, ...]  # words a fitting bed holds (a lasting background belongs under it); (): none does


CASES = (
    Case("a night train crosses the mountains in a snowstorm: the wheels clatter, the brakes squeal in a tunnel, "
         "and the train pulls into a quiet station at dawn", 60.0, ("tense", "cold", "calm", "lonely", "quiet",
         "mysterious", "peaceful", "eerie", "ominous"), ("wind", "snow", "storm", "blizzard", "engine", "rumbl", "train", "rail", "wheel")),
    Case("a blacksmith forges a sword: the bellows pump, the hammer rings on the anvil, the hot blade hisses in "
         "water", 45.0, ("focused", "intense", "determined", "energetic", "dramatic", "busy", "tense", "industrious",
         "powerful", "rhythmic", "steady"), ("fire", "forge", "furnace", "roar", "flame", "crackl", "coal", "bellows")),
    Case("a thunderstorm rolls over a farm at night; the horses panic in the barn, then the rain softens and "
         "crickets return", 60.0, ("tense", "ominous", "dramatic", "calm", "stormy", "dark", "peaceful", "relief"),
         ("rain", "storm", "thunder", "wind", "cricket")),
    Case("a chess match in a silent hall: a clock ticks, a piece is placed, a player coughs, the final move and "
         "polite applause", 30.0, ("tense", "quiet", "focused", "calm", "suspense", "concentrated"), ()),
    Case("a submarine dives: the alarm sounds, the hull creaks under pressure, sonar pings, a torpedo passes",
         60.0, ("tense", "ominous", "suspense", "dramatic", "claustrophobic", "eerie", "dark"), ("engine", "hum", "water", "hull", "drone", "motor", "sonar", "propeller", "bubbl")),
    Case("a birthday party in a garden: children laugh, balloons pop, a dog barks, everyone sings and claps",
         45.0, ("joyful", "happy", "cheerful", "festive", "playful", "lively", "fun"), ("chatter", "crowd", "guest", "bird", "music", "laugh", "murmur", "talk")),
    Case("an astronaut repairs a satellite: the suit hisses, the radio crackles, tools clank, the hatch closes",
         60.0, ("tense", "focused", "calm", "isolated", "mysterious", "eerie", "lonely"), ("radio", "static", "hum", "breath", "hiss", "beep", "drone", "silence", "air")),
    Case("a cook prepares breakfast: eggs sizzle in a pan, a kettle whistles, toast pops, a knife taps a board",
         30.0, ("calm", "cozy", "busy", "cheerful", "homely", "warm", "peaceful", "relaxed"), ()),
    Case("a ghost walks through an abandoned house: floorboards creak, a door slams, a music box plays, whispers "
         "fade", 60.0, ("eerie", "ominous", "creepy", "haunting", "spooky", "tense", "mysterious", "dark", "sinister"),
         ("wind", "creak", "drone", "draft", "howl", "rain", "silence", "hum")),
    Case("a marathon finish: runners' footsteps slap the road, the crowd cheers louder, a whistle blows, a "
         "medal clinks", 45.0, ("exciting", "triumphant", "energetic", "joyful", "intense", "excited", "victorious"),
         ("crowd", "cheer", "spectator", "applau", "chant", "clap")),
)

SOUND_WORDS = (  # a caption names something heard when it holds one of these (stems: "crackl" in "crackles")
    "bang", "bark", "beep", "bell", "blow", "boil", "boom", "buzz", "cheer", "chim", "chirp", "clang", "clank",
    "clap", "clatter", "click", "clink", "clock", "cough", "crack", "creak", "croak", "crunch", "cry", "drip",
    "drum", "echo", "engine", "footstep", "gasp", "growl", "hammer", "hiss", "hoot", "hum", "knock", "laugh",
    "music", "neigh", "noise", "ping", "pop", "pour", "puff", "purr", "rain", "rattl", "ring", "roar", "rumbl",
    "rustl", "scrap", "scream", "screech", "shout", "sing", "siren", "sizzl", "slam", "slap", "snap", "sonar",
    "splash", "squeak", "squeal", "static", "step", "stomp", "swoosh", "tap", "thud", "thump", "thunder", "tick",
    "voice", "whisper", "whistl", "wind", "whoosh", "alarm", "applau", "chatter", "murmur", "crowd", "wave",
    "water", "radio", "beat", "pump", "groan", "crackl", "sound", "patter", "gust", "howl", "honk", "wheel",
    "tone", "song", "plays", "play", "clock", "sigh", "breath", "crickets", "sputter", "whir", "whine",
)  # fmt: skip
PLOT_WORDS = ("feel", "feels", "decide", "realiz", "remember", "think", "hope", "happy", "sad", "angry", "relieved",
              "hero", "wonders", "wants", "love")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/plan_quality.py", description=__doc__.splitlines()[0])
    parser.add_argument("--planner", help="planner reference [default: the real 1.5B GGUF of real-planner-gguf]")
    parser.add_argument("--planner-model", help="with an http(s):// --planner: the model on that server")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads [default: torch's]")
    parser.add_argument("--out", type=Path, help="write the table and the plans to this markdown file too")
    return parser.parse_args(argv)


def real_gguf() -> str:
    done = subprocess.run([str(REAL_PLANNER_TOOL)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def is_sound(caption: str) -> bool:
    words = _words(caption)
    heard = any(word.startswith(stem) for word in words for stem in SOUND_WORDS)
    plot = any(word.startswith(stem) for word in words for stem in PLOT_WORDS)
    return heard and not plot


EXAMPLE_WORDS = ("market",)  # the prompt example's ambience: a bed that copies it is not the story's


def _beds_fit(case: Case, captions: list[str]) -> bool:
    if not case.beds:
        return not captions
    words = [_words(caption) for caption in captions]
    fits = any(is_sound(c) and any(w.startswith(s) for w in ws for s in case.beds) for c, ws in zip(captions, words))
    copied = any(w.startswith(stem) for ws in words for w in ws for stem in EXAMPLE_WORDS)
    return fits and not copied


def score(case: Case, plan: Plan | None, error: str | None, seconds: float) -> dict:
    if plan is None:
        return {"case": case, "plan": None, "error": error, "seconds": seconds}
    foreground = plan.foreground()
    beds = [e for e in plan.events if e.layer > 0]
    bed_captions = sorted({e.caption for e in beds})
    tone = plan.tone.lower()
    return {
        "case": case, "plan": plan, "error": None, "seconds": seconds,
        "sum_ok": abs(math.fsum(e.duration_s for e in foreground) - case.total_s) < 1e-6,
        "sounds": sum(is_sound(c) for c in [e.caption for e in foreground] + bed_captions),
        "captions": len(foreground) + len(bed_captions),
        "distinct": len({e.caption.lower() for e in foreground}) == len(foreground),
        "tone_ok": any(mood in tone for mood in case.moods), "beds": len(bed_captions),
        "beds_ok": _beds_fit(case, bed_captions), "events": len(foreground), "bed_captions": bed_captions,
    }  # fmt: skip


def table(rows: list[dict], planner: str, threads: int) -> str:
    lines = [
        f"Planner `{planner}` through llama.cpp, {threads} thread(s), greedy; request as the CLI sends it for "
        f"TangoFlux (events <= {LONGEST_CLIP_S} s). {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| # | story | s | valid | events | sum = s | sound captions | distinct | tone | tone fits | beds | "
        "beds fit | plan s |",
        "|---|---|---:|---|---:|---|---:|---|---|---|---|---|---:|",
    ]
    for i, r in enumerate(rows, start=1):
        case = r["case"]
        story = case.prompt.split(":")[0].split(";")[0][:48]
        if r["plan"] is None:
            lines.append(f"| {i} | {story} | {case.total_s:g} | no: {r['error'][:60]} | | | | | | | | | "
                         f"{r['seconds']:.1f} |")  # fmt: skip
            continue
        mark = {True: "yes", False: "**no**"}
        lines.append(
            f"| {i} | {story} | {case.total_s:g} | yes | {r['events']} | {mark[r['sum_ok']]} | "
            f"{r['sounds']}/{r['captions']} | {mark[r['distinct']]} | {r['plan'].tone} | {mark[r['tone_ok']]} | "
            f"{'; '.join(r['bed_captions']) or '-'} | {mark[r['beds_ok']]} | {r['seconds']:.1f} |"
        )
    valid = [r for r in rows if r["plan"] is not None]
    total = {
        "valid": len(valid), "sum": sum(r["sum_ok"] for r in valid), "distinct": sum(r["distinct"] for r in valid),
        "sounds": sum(r["sounds"] for r in valid), "captions": sum(r["captions"] for r in valid),
        "tone": sum(r["tone_ok"] for r in valid), "beds": sum(r["beds_ok"] for r in valid),
    }  # fmt: skip
    lines += [
        "",
        f"**{total['valid']}/{len(rows)} valid; durations sum to the request {total['sum']}/{len(valid)}; "
        f"sound captions {total['sounds']}/{total['captions']}; distinct foreground captions "
        f"{total['distinct']}/{len(valid)}; tone fits {total['tone']}/{len(valid)}; beds fit "
        f"{total['beds']}/{len(valid)}; mean plan time "
        f"{sum(r['seconds'] for r in rows) / len(rows):.1f} s.**",
        "",
        "## The plans",
    ]
    for i, r in enumerate(rows, start=1):
        lines += ["", f"{i}. *{r['case'].prompt}* ({r['case'].total_s:g} s)"]
        if r["plan"] is None:
            lines.append(f"   - no plan: {r['error']}")
            continue
        plan = r["plan"]
        lines.append(f"   - tone `{plan.tone}`; reasoning: {plan.reasoning}")
        for e in plan.events:
            where = "bed " + str(e.layer) if e.layer else "   "
            lines.append(f"   - `{e.start_s:6.2f}-{e.end_s:6.2f} s` {where} {e.caption} ({e.tone or '-'})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = args.planner or real_gguf()
    planner = load_planner(ref, device=torch.device("cpu"), dtype=torch.bfloat16, model_name=args.planner_model)
    rows = []
    for i, case in enumerate(CASES, start=1):
        request = StoryRequest(case.prompt, case.total_s, max_event_s=LONGEST_CLIP_S)
        started = time.perf_counter()
        try:
            plan, error = planner.plan(request), None
        except AudiostoryError as err:
            plan, error = None, str(err)
        rows.append(score(case, plan, error, time.perf_counter() - started))
        print(f"{i}/{len(CASES)} planned in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    text = table(rows, Path(ref).name if not ref.startswith("http") else ref, args.threads)
    print(text)
    if args.out:
        args.out.write_text("# Plan quality\n\n" + text)


if __name__ == "__main__":
    main()
