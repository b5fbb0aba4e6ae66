"""`soundloom bench finetune`'s own parts: the held-out prompts it makes from a folder's dataset and the
verdict it prints. (The run itself is the Train tab's quick preset, tested in test_train_room.py.)"""

from __future__ import annotations

import json

import pytest
from test_arc import CLIPS, tone, write_corpus

import app.cli as cli
from app.bench_finetune import MIN_PROMPT_SECONDS, verdict, write_folder_prompts
from pipelines.errors import BadInput
from training.corpus import read_manifest
from training.eval_metrics import read_prompts

HELD_OUT = [
    ("t1", lambda: tone(500.0, 0.2), ["a short blip"], "test"),
    ("t2", lambda: tone(300.0, 0.9), ["a longer tone"], "test"),
]


def test_held_out_prompts_are_the_test_clips_captions_at_their_length(tmp_path):
    data = write_corpus(tmp_path / "mine", CLIPS + HELD_OUT)
    held_out = read_manifest(data, split="test")
    assert len(held_out) == 2
    prompts = read_prompts(write_folder_prompts(data, tmp_path / "prompts.jsonl"))
    assert [p["prompt"] for p in prompts] == [r["captions"][0] for r in held_out]
    for p, r in zip(prompts, held_out):
        assert p["seconds"] == round(max(MIN_PROMPT_SECONDS, r["seconds"]), 2)


def test_a_folder_with_no_held_out_clip_is_said_in_one_sentence(tmp_path):
    data = write_corpus(tmp_path / "mine")
    lines = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    (data / "manifest.jsonl").write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in lines))
    with pytest.raises(BadInput, match="no held-out"):
        write_folder_prompts(data, tmp_path / "prompts.jsonl")


def test_the_verdict_holds_each_figure_to_its_target():
    def figures(folder_after, dev_after):
        return {
            "folder.start": {"fd_judge": 1.0},
            "folder.tuned": {"fd_judge": folder_after},
            "dev.start": {"fd_judge": 0.2},
            "dev.tuned": {"fd_judge": dev_after},
        }

    good = verdict(figures(0.69, 0.219), 19 * 60)
    assert (good["wall"], good["folder"], good["dev"]) == ("PASS", "PASS", "PASS")
    assert good["folder_fd_change"] == pytest.approx(-0.31) and good["dev_fd_change"] == pytest.approx(0.095)
    bad = verdict(figures(0.75, 0.23), 21 * 60)
    assert (bad["wall"], bad["folder"], bad["dev"]) == ("FAIL", "FAIL", "FAIL")
    assert verdict({"folder.start": {"fd_judge": 1.0}}, 60)["folder"] == "n/a"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "finetune"], "needs --data FOLDER"),
        (["bench", "finetune", "--data", "/nonexistent/kit"], "does not exist"),
        (["bench", "finetune", "--data", ".", "--requests", "3"], "--requests is not for"),
    ],
)
def test_bench_finetune_refuses_bad_flags_with_one_line(capsys, argv, needle):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
