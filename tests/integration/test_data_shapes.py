"""Training on the data shapes researchers have: TRL's implicit-prompt conversations, the
UltraFeedback-binarized shape, and a weighted mixture of two files; and `prefopt-train`
choosing data=files by itself for `data.path`. Runs are two optimizer steps of the tiny
model: the plumbing, not the learning."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.data.synthetic import SyntheticConfig, splits

BIN = Path(sys.executable).parent
# data=files is sized for real models; the tiny one holds 256 positions.
RUN = ["data=files", "model=tiny", "data.max_length=96", "data.max_prompt_length=48",
       "data.batch_size=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
       "export_policy=false"]


def sort_pairs(n: int, seed: int = 7) -> list[dict]:
    """n pairwise records {prompt, chosen, rejected} of the synthetic sort/reverse task."""
    return splits(SyntheticConfig(n_train=n, n_val=1, seed=seed), "pairwise")["train"]


def turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def report(run: Path) -> dict:
    return json.loads((run / "data_report.json").read_text())


@pytest.mark.slow
def test_training_on_implicit_prompt_conversations(compose, tmp_path):
    from prefopt.training.train import train

    records = [{"chosen": [turn("user", r["prompt"]), turn("assistant", r["chosen"])],
                "rejected": [turn("user", r["prompt"]), turn("assistant", r["rejected"])]}
               for r in sort_pairs(20)]
    path = write_jsonl(tmp_path / "trl.jsonl", records)
    train(compose(*RUN, f"data.path={path}", "data.val_fraction=0.2"))
    # 20 records, round(0.2 * 20) = 4 held out; none skipped.
    assert {k: report(tmp_path / "run")[k]["kept"] for k in ("train", "val")} == \
        {"train": 16, "val": 4}


@pytest.mark.slow
def test_training_on_the_ultrafeedback_shape(compose, tmp_path):
    from prefopt.training.train import train

    records = [{"prompt": r["prompt"], "prompt_id": str(i), "score_chosen": 8.0,
                "chosen": [turn("user", r["prompt"]), turn("assistant", r["chosen"])],
                "rejected": [turn("user", r["prompt"]), turn("assistant", r["rejected"])]}
               for i, r in enumerate(sort_pairs(12))]
    train_path = write_jsonl(tmp_path / "train_prefs.jsonl", records[:8])
    val_path = write_jsonl(tmp_path / "test_prefs.jsonl", records[8:])
    train(compose(*RUN, f"data.path={train_path}", f"data.val_path={val_path}"))
    assert {k: report(tmp_path / "run")[k]["kept"] for k in ("train", "val")} == \
        {"train": 8, "val": 4}


@pytest.mark.slow
def test_training_on_a_mixture_of_two_files(compose, tmp_path):
    from prefopt.training.train import train

    a = write_jsonl(tmp_path / "a.jsonl", sort_pairs(12, seed=1))
    renamed = [{"question": r["prompt"], "good": r["chosen"], "rejected": r["rejected"]}
               for r in sort_pairs(8, seed=2)]
    b = write_jsonl(tmp_path / "b.jsonl", renamed)
    val = write_jsonl(tmp_path / "val.jsonl", sort_pairs(4, seed=3))
    mix = (f"data.mix=[{{path: '{a}', weight: 0.5}}, "
           f"{{path: '{b}', weight: 2, columns: {{prompt: question, chosen: good}}}}]")
    train(compose(*RUN, mix, f"data.val_path={val}"))
    # a: round(0.5 * 12) = 6 records; b: 2 * 8 = 16.
    assert report(tmp_path / "run")["train"]["records"] == 22
    assert report(tmp_path / "run")["val"]["records"] == 4


@pytest.mark.slow
def test_the_command_line_chooses_data_files_for_a_path(tmp_path):
    """`prefopt-train data.path=x` trains with data=files' settings, and says so."""
    path = write_jsonl(tmp_path / "pairs.jsonl", sort_pairs(4))
    shown = subprocess.run([str(BIN / "prefopt-train"), f"data.path={path}", "--cfg", "job"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "prefopt-train: data.path given: using data=files (choose another with " \
           "data=<name>)" in shown.stderr
    assert "  max_length: 1024\n" in shown.stdout and f"  path: {path}\n" in shown.stdout
