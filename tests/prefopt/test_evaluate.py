"""prefopt-eval: a run re-evaluated from its directory gives its own final metrics; win
rates, raw and length-controlled."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.evaluate import evaluate, length_controlled_win_rate, win_rates

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("extra", [[], ["model.lora.r=4"], ["reference=cached"]])
def test_eval_reproduces_the_runs_final_metrics(compose, fast_overrides, tmp_path, extra):
    from prefopt.training.train import train

    cache = [f"reference_cache_dir={tmp_path / 'cache'}"] if extra == ["reference=cached"] else []
    result = train(compose(*fast_overrides, "export_policy=false", *extra, *cache))
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    metrics = evaluate(run)["metrics"]
    for key, value in result["end"].items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_length_controlled_win_rate_removes_length():
    # The policy is usually longer (length difference ~ N(0.7, 1)), and the judge prefers
    # longer answers: P(win) = σ(1.5 · difference), with no other advantage. The raw win
    # rate is well above ½; at equal length the policy is a coin flip, so σ(b₀) ≈ ½.
    generator = torch.Generator().manual_seed(0)
    difference = torch.randn(4000, generator=generator, dtype=torch.float64) + 0.7
    wins = (torch.rand(4000, generator=generator, dtype=torch.float64)
            < torch.sigmoid(1.5 * difference)).double()
    assert wins.mean().item() > 0.65
    assert length_controlled_win_rate(wins, difference) == pytest.approx(0.5, abs=0.04)
    # A real advantage, P(win) = σ(1 + 1.5 · difference): σ(1) = 0.73 at equal length.
    better = (torch.rand(4000, generator=generator, dtype=torch.float64)
              < torch.sigmoid(1.0 + 1.5 * difference)).double()
    assert length_controlled_win_rate(better, difference) == pytest.approx(0.731, abs=0.04)


def test_win_rate_counts_ties_as_half():
    rates = win_rates(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 2.0, 1.0, 1.0]),
                      [3, 3, 3, 3], [3, 3, 3, 3])
    assert rates["win_rate"] == 0.625  # win, tie, loss, win
    assert rates["mean_length_policy"] == 3.0


@pytest.mark.slow
def test_eval_cli_with_a_reward_model(tmp_path):
    fast = ["trainer.max_steps=2", "trainer.val_check_interval=2", "data.synthetic.n_train=16",
            "data.synthetic.n_val=8", "data.batch_size=4", "trainer.enable_progress_bar=false"]
    for name, extra in (("policy", []), ("rm", ["objective=reward_bt"])):
        subprocess.run([str(BIN / "prefopt-train"), *fast, *extra,
                        f"output_dir={tmp_path / name}"], check=True, capture_output=True,
                       cwd=tmp_path, timeout=300)
    result = subprocess.run([str(BIN / "prefopt-eval"), str(tmp_path / "policy"),
                             "--reward-model", str(tmp_path / "rm" / "policy"),
                             "--max-prompts", "6", "--max-new-tokens", "4"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generation/length_controlled_win_rate" in result.stdout
    report = json.loads((tmp_path / "policy" / "eval.json").read_text())
    assert 0 <= report["generation"]["win_rate"] <= 1 and report["generation"]["prompts"] == 6
    assert "val/rewards/accuracies" in report["metrics"]
    missing = subprocess.run([str(BIN / "prefopt-eval"), str(tmp_path)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
    assert missing.returncode != 0 and "config.yaml" in missing.stderr


@pytest.mark.parametrize("text", ["objective: [unclosed\n", "seed: 1\n",
                                  "objective: {name: dpo, beta: abc}\n"])
def test_eval_a_broken_config_is_one_line(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    result = subprocess.run([str(BIN / "prefopt-eval"), str(tmp_path)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"prefopt-eval: error: {tmp_path / 'config.yaml'}: not a ")
    assert "restore it from the run, or train again" in line
    assert (tmp_path / "config.yaml").read_text() == text


def test_eval_a_file_as_run_dir_is_one_line(tmp_path):
    given = tmp_path / "last.ckpt"
    given.write_text("x")
    result = subprocess.run([str(BIN / "prefopt-eval"), str(given)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"prefopt-eval: error: {given}: is a file, not a run directory; give the "
                    "output_dir of a prefopt-train run (the folder that holds config.yaml)")
