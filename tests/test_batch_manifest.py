"""The batch manifest and the resume rules, without models: records, torn lines, duplicates, leftovers, the lock."""

from __future__ import annotations

import json

import pytest

from audiostory_cli.batch import resume
from audiostory_cli.batch.manifest import ManifestWriter, Record, latest_by_line, manifest_path, read_manifest
from audiostory_cli.errors import InputError


def _record(line: int, status: str = "ok", **fields) -> Record:
    return Record(line=line, prompt=f"prompt {line}", output=f"{line:03d}.wav", status=status, seconds=1.5, **fields)


def test_records_are_whole_lines_appended_across_runs(tmp_path):
    path = manifest_path(tmp_path)
    with ManifestWriter(path) as manifest:
        manifest.append(_record(1, run="a"))
        manifest.append(_record(2, "failed", error="line 2: the prompt is empty", run="a"))
    with ManifestWriter(path) as manifest:
        manifest.append(_record(1, "skipped", run="b"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok", "failed", "skipped"]
    assert set(json.loads(lines[1])) == {"line", "prompt", "output", "status", "seconds", "error", "run", "ended"}
    latest = latest_by_line(read_manifest(path))
    assert latest[1].status == "skipped" and latest[1].run == "b"
    assert latest[2].error == "line 2: the prompt is empty"


def test_a_torn_last_line_is_skipped_and_the_next_run_starts_a_fresh_line(tmp_path):
    path = manifest_path(tmp_path)
    with ManifestWriter(path) as manifest:
        manifest.append(_record(1))
    whole = _record(2).to_json()
    with open(path, "a") as file:
        file.write(whole[: len(whole) // 2])  # what a SIGKILL in the middle of write() can leave
    assert [r.line for r in read_manifest(path)] == [1]
    with ManifestWriter(path) as manifest:
        manifest.append(_record(2))
    assert [r.line for r in read_manifest(path)] == [1, 2]
    assert path.read_text().endswith(whole + "\n")


def test_a_missing_manifest_reads_as_no_records(tmp_path):
    assert read_manifest(tmp_path / "manifest.jsonl") == []


def test_duplicate_output_names_are_refused_up_front_naming_both_lines():
    with pytest.raises(InputError, match="lines 2 and 5 both write harbor.wav"):
        resume.check_unique_outputs([(2, "harbor.wav"), (3, "forest.wav"), (5, "harbor.wav")])
    with pytest.raises(InputError, match="lines 1 and 2 both write Story.wav"):
        resume.check_unique_outputs([(1, "story.wav"), (2, "Story.wav")])  # one file on macOS and Windows
    resume.check_unique_outputs([(1, "a.wav"), (2, "b.wav")])


def test_a_story_is_finished_only_with_audio_and_a_plan_made_for_the_same_request(tmp_path):
    audio, plan = tmp_path / "a.wav", tmp_path / "a.plan.json"
    request = resume.request_record(prompt="rain", duration_s=2.0, seed=1, render={"steps": 2})
    assert not resume.story_is_finished(audio, plan, request)
    audio.write_bytes(b"RIFF....")
    assert not resume.story_is_finished(audio, plan, request)  # audio without its plan: unfinished
    plan.write_text(json.dumps({"request": request}))
    assert resume.story_is_finished(audio, plan, request)
    other = resume.request_record(prompt="rain", duration_s=2.0, seed=1, render={"steps": 3})
    assert not resume.story_is_finished(audio, plan, other)
    plan.write_text('{"request": ')  # not JSON
    assert not resume.story_is_finished(audio, plan, request)


def test_leftover_partial_files_are_removed_and_nothing_else(tmp_path):
    leftovers = [".a.wav.0123abcd.partial.wav", ".a.plan.json.deadbeef.partial.json"]
    kept = ["a.wav", "a.plan.json", "manifest.jsonl", ".hidden", "b.partial.wav"]
    for name in leftovers + kept:
        (tmp_path / name).write_text("x")
    removed = resume.clean_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    with resume.folder_lock(tmp_path):
        with pytest.raises(InputError, match="another batch is writing into"):
            with resume.folder_lock(tmp_path):
                pass
    with resume.folder_lock(tmp_path):  # released when the first run ends
        pass
