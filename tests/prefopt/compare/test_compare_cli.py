"""prefopt-compare on run directories it did not train, and its one-line errors."""

import json
import math

import pytest

from prefopt.compare import cli, runs

TINY = {"trainer": {"max_steps": 2, "val_check_interval": 2, "enable_progress_bar": False},
        "data": {"synthetic": {"n_train": 32, "n_val": 8}, "batch_size": 4},
        "samples": {"count": 0}}
EVAL = ["--prompts", "2", "--samples", "2", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished DPO run, trained with the Python API (not by prefopt-compare)."""
    import prefopt

    out = tmp_path_factory.mktemp("runs") / "dpo"
    prefopt.train("dpo", output_dir=out, **TINY)
    return out


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_reads_a_run_it_did_not_train(trained, tmp_path):
    before = _files(trained)
    cli.main([str(trained), *EVAL, "--out", str(tmp_path / "cmp")])
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    summary = json.loads((trained / "summary.json").read_text())
    (run,) = payload["runs"]
    assert run["path"] == str(trained) and run["objective"] == "dpo" and run["seed"] == 0
    assert run["accuracy"] == summary["end"]["val/rewards/accuracies"]
    assert run["runtime_s"] == summary["runtime_s"]
    assert 0.0 <= run["true_reward"] <= 1.0 and math.isfinite(run["kl"])
    assert payload["evaluation"] == {"prompts": 2, "samples": 2, "max_new_tokens": 4,
                                     "temperature": 1.0, "seed": 0}
    assert payload["warm_start"] is None
    (row,) = payload["rows"]
    assert row["seeds"] == [0] and row["true_reward"]["ci"] is None
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| dpo | - | 1 |" in table
    assert _files(trained) == before  # nothing written into the run


def test_labels_say_what_differs_between_runs(compose):
    def entry(*overrides):
        return runs.RunEntry(path=None, objective=overrides[0].split("=")[1], seed=0,
                             setting="", config=compose(*overrides), runtime_s=None,
                             accuracy=None)

    entries = [entry("objective=dpo", "objective.beta=0.1"),
               entry("objective=dpo", "objective.beta=0.5", "seed=1"),
               entry("objective=sft")]
    runs.label_runs(entries)
    assert [e.setting for e in entries] == ["beta=0.1", "beta=0.5", ""]
    entries.append(entry("objective=sft", "optimizer.lr=0.01"))
    runs.label_runs(entries)
    assert [e.setting for e in entries] == [
        "beta=0.1 optimizer.lr=0.001", "beta=0.5 optimizer.lr=0.001",
        "optimizer.lr=0.001", "optimizer.lr=0.01"]


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    message = str(exited.value.code)
    assert message.startswith("prefopt-compare: error: ") and "\n" not in message
    return message


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: not a run directory (it holds no config.yaml)" in _error(capsys,
                                                                                str(empty))
    missing = tmp_path / "missing"
    assert f"{missing}: no such run directory" in _error(capsys, str(missing))


def test_an_unfinished_run_is_named(trained, tmp_path, capsys):
    import shutil

    copy = tmp_path / "unfinished"
    shutil.copytree(trained, copy)
    (copy / "summary.json").unlink()
    assert f"{copy}: the run has not finished (no summary.json)" in _error(capsys, str(copy))


def test_an_unknown_objective_is_named(tmp_path, capsys):
    message = _error(capsys, "objective=dpo,nosuch", "--out", str(tmp_path / "c"))
    assert "unknown objective 'nosuch'" in message
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_overrides_and_run_directories_do_not_mix(trained, capsys):
    assert "either overrides" in _error(capsys, str(trained), "objective=dpo")


def test_a_misspelt_key_is_refused_before_anything_trains(tmp_path, capsys):
    message = _error(capsys, "objective=dpo", "trainer.max_stepz=3", "--out",
                     str(tmp_path / "c"))
    assert "trainer.max_stepz" in message and "max_steps" in message
    assert not (tmp_path / "c").exists()  # no warm start, no run


def test_help_lists_the_default_comparison(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert f"objective.beta={cli.DEFAULT_BETAS}" in text
    assert f"seed={cli.DEFAULT_SEEDS}" in text and f"max_steps={cli.DEFAULT_STEPS}" in text
    assert "95% Student-t" in text and "temperature 1" in text


def test_a_run_without_its_policy_is_named(trained, tmp_path, capsys):
    import shutil

    copy = tmp_path / "no-policy"
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / "policy")
    assert f"{copy}: holds no exported policy/" in _error(capsys, str(copy))


def test_a_run_on_other_data_has_no_true_reward():
    from prefopt.compare.evaluation import NotComparableError, heldout_prompts
    from prefopt.data.datamodule import DataConfig

    with pytest.raises(NotComparableError, match="run-x: trained on data.path=pairs.jsonl"):
        heldout_prompts(DataConfig(path="pairs.jsonl"), 4, "run-x")
