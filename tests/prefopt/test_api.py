"""The Python API: prefopt.train / load_run / objectives / Run, as a notebook uses them."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import prefopt
from prefopt import api
from prefopt.data.records import RecordError
from prefopt.registry import PluginError
from prefopt.training.config import ConfigError
from prefopt.training.rundir import RunDirError

BIN = Path(sys.executable).parent
# A couple of seconds a run on one core: 2 optimizer steps on a handful of records.
TRAINER = {"max_steps": 2, "val_check_interval": 2, "log_every_n_steps": 1,
           "enable_progress_bar": False}
SYNTHETIC = ["data.synthetic.n_train=32", "data.synthetic.n_val=8", "data.batch_size=4"]
RECORDS = [{"prompt": f"sort {a}{b}", "chosen": f"{min(a, b)}{max(a, b)}",
            "rejected": f"{max(a, b)}{min(a, b)}"} for a, b in
           [(2, 1), (3, 1), (4, 2), (5, 3), (7, 1), (8, 6), (9, 2), (6, 4), (9, 8), (7, 5)]]


def _parsed(text: str):
    (override,) = OverridesParser.create().parse_overrides([text])
    return override.key_or_group, override.value()


@pytest.mark.parametrize("value", [
    "plain", "it's", "a b, c=d", "ends with a backslash \\", "back\\slash'quote", "${x}y",
    "/tmp/some dir/data.jsonl", 3, -2, 1e-05, 0.5, True, False, None, [1, "a,b", None],
    {"name": "quality", "min": 0, "max": 4.5},
])
def test_python_values_reach_hydra_unchanged(value):
    key, parsed = _parsed(f"data.x={api._value('data.x', value)}")
    assert key == "data.x"
    if value == "${x}y":  # an interpolation stays one, unresolved
        assert str(parsed) == "${x}y"
    else:
        assert parsed == value and type(parsed) is type(value)


def test_nested_settings_become_dotted_overrides():
    assert api._settings("trainer", {"max_steps": 20, "+detect_anomaly": True}) == [
        "trainer.max_steps=20", "+trainer.detect_anomaly=true"]
    assert api._settings("model", {"lora": {"r": 8, "target_modules": ["q_proj"]}}) == [
        "model.lora.r=8", "model.lora.target_modules=['q_proj']"]
    with pytest.raises(ConfigError, match=r"optimizer\.lr=<object .*not a setting's value"):
        api._settings("optimizer", {"lr": object()})


def test_arguments_compose_into_the_config(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    wanted, files = api.overrides_for(
        {"name": "ipo", "beta": 0.5}, {"name_or_path": str(model_dir), "lora": {"r": 4}},
        str(tmp_path / "pairs.jsonl"), tmp_path / "run", ["seed=7"], scheduler="constant",
        trainer={"max_steps": 20}, reference="cached", export_policy=False)
    cfg = api.compose(wanted)
    assert files == {}
    assert (cfg.objective.name, cfg.objective.beta) == ("ipo", 0.5)
    assert (cfg.model.name_or_path, cfg.model.lora.r) == (str(model_dir), 4)
    assert cfg.data.path == str(tmp_path / "pairs.jsonl")
    assert cfg.data.max_length == 1024  # data=files: conf/data/files.yaml, not synthetic's 64
    assert cfg.scheduler.name == "constant_with_warmup"  # conf/scheduler/constant.yaml
    assert cfg.trainer.max_steps == 20
    assert cfg.reference.value == "cached" and cfg.export_policy is False and cfg.seed == 7
    assert cfg.output_dir == str(tmp_path / "run")


@pytest.mark.slow
def test_keywords_compose_what_the_command_line_does(tmp_path):
    line = ["objective=ipo", "objective.beta=0.25", "model.lora.r=2", "trainer.max_steps=20",
            "+trainer.detect_anomaly=false", "scheduler=constant", "optimizer.lr=3e-05",
            "seed=3", f"output_dir={tmp_path}"]
    shown = subprocess.run([str(BIN / "prefopt-train"), "--cfg", "job", *line],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    wanted, _ = api.overrides_for({"name": "ipo", "beta": 0.25}, {"lora": {"r": 2}}, None,
                                  tmp_path, trainer={"max_steps": 20, "+detect_anomaly": False},
                                  scheduler="constant", optimizer={"lr": 3e-5}, seed=3)
    composed = yaml.safe_load(OmegaConf.to_yaml(api.compose(wanted)))
    assert composed == yaml.safe_load(shown.stdout)


def test_compose_inside_a_running_hydra_app_leaves_it_running(registered):
    """A notebook cell inside a @hydra.main app: the app's GlobalHydra is set aside and
    put back, so the app's own compose still works afterwards; twice in a row."""
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    with initialize(config_path=None, version_base="1.3", job_name="outer"):
        outer = GlobalHydra.instance().hydra
        for beta in (0.2, 0.3):
            cfg = api.compose(["output_dir=/tmp/unused", f"objective.beta={beta}"])
            assert cfg.objective.beta == beta
        assert GlobalHydra.instance().hydra is outer
        assert compose(overrides=["+a=1"]).a == 1
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.parametrize("arguments,message", [
    ({"objective": {"name": "ipo", "betaa": 1}},
     r"^objective\.betaa: objective 'ipo' has no setting 'betaa' \(its settings: beta\)\. "
     r"Did you mean objective\.beta\?$"),
    ({"seeed": 1}, r"^seeed: the config has no setting 'seeed' .*Did you mean seed\?$"),
    ({"trainer": {"precison": "16-mixed"}},
     r"^trainer\.precison: .*Did you mean trainer\.precision\? To pass a new trainer "
     r"argument, force it with a '\+': trainer=\{'\+precison': \.\.\.\}"),
    ({"model": {"tiny": {"hidden": 8}}}, r"^model\.tiny\.hidden: 'model\.tiny' has no setting"),
    ({"optimizer": "sgd"}, r"^optimizer='sgd': no such option \(available: adamw\)\.$"),
    ({"data": {"batch_size": "eight"}}, r"^data\.batch_size: Value 'eight' of type 'str' "
                                        r"could not be converted to Integer$"),
])
def test_an_unknown_or_bad_setting_raises_naming_it(tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        prefopt.train(**arguments)
    # Nothing ran: the run directory made for it is gone again.
    assert [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and any(p.iterdir())
            and not any(q.is_dir() for q in p.iterdir())] == []


def test_an_unknown_objective_is_named_with_the_closest_one(tmp_path):
    with pytest.raises(PluginError, match=r"unknown objective 'ipoo'\. Available objectives: "
                                          r".*Did you mean 'ipo'\?"):
        prefopt.train("ipoo", output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments,culprit", [  # test_cli.py: what prefopt-train prints
    ({"data": {"batch_size": 0}},
     "data.batch_size=0: records per batch must be a whole number >= 1"),
    ({"trainer": {"max_steps": "abc"}}, "trainer.max_steps='abc': must be a whole number"),
])
def test_a_bad_setting_raises_the_message_prefopt_train_prints(tmp_path, arguments, culprit):
    with pytest.raises(ConfigError) as raised:
        prefopt.train(output_dir=tmp_path / "run", **arguments)
    assert str(raised.value).startswith(culprit) and "\n" not in str(raised.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_bad_value_of_an_objective_raises_the_cli_message(tmp_path):
    with pytest.raises(ConfigError, match=r"^objective 'ipo': objective\.beta must be > 0, "
                                          r"got -1\.0; give objective\.<setting>=<value>"):
        prefopt.train({"name": "ipo", "beta": -1}, output_dir=tmp_path / "run",
                      overrides=SYNTHETIC)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("data,message", [
    ([RECORDS[0], "sort 12"], r"^data\.path\[1\]: a record must be a dict of fields, not "
                              r"'sort 12' \(str\)"),
    ([RECORDS[0], {**RECORDS[1], "chosen": {1, 2}}],
     r"^data\.path\[1\]: field 'chosen': \{1, 2\} \(set\) cannot be written as JSON"),
    ([], r"^data\.path: holds no records"),
])
def test_records_that_cannot_be_written_name_the_record_and_field(tmp_path, data, message):
    with pytest.raises(RecordError, match=message):
        prefopt.train(data=data, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()


def test_a_dataset_dict_needs_train_and_one_validation_split(tmp_path):
    import datasets

    records = datasets.Dataset.from_list(RECORDS)
    splits = datasets.DatasetDict({"train": records, "validation": records, "test": records})
    with pytest.raises(ConfigError, match=r"splits \['test', 'train', 'validation'\]: "
                                          r"prefopt\.train reads a 'train' split and at most "
                                          r"one validation split"):
        prefopt.train(data=splits, output_dir=tmp_path / "run")


def test_resume_last_needs_the_run_and_keeps_its_records(tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path='last' resumes the run in output_dir"):
        prefopt.train(ckpt_path="last")
    with pytest.raises(ConfigError, match=r"a resume trains on the run's own records"):
        prefopt.train(data=RECORDS, output_dir=tmp_path, ckpt_path="last")


def _fake_run(folder: Path, compose_cfg) -> None:
    """A finished run's files, written by hand: config.yaml, summary.json, metrics.csv."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg, resolve=True))
    (folder / "summary.json").write_text(json.dumps(
        {"start": {"val/loss": 0.75, "val/rewards/accuracies": 0.5},
         "end": {"val/loss": 0.25, "val/rewards/accuracies": 0.875}, "steps": 6}))
    (folder / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,,0.75\n0,3,0.5,\n0.0,6.0,,0.25\n")


def test_load_run_reads_what_a_run_wrote(compose, tmp_path):
    folder = tmp_path / "run"
    _fake_run(folder, compose("objective=ipo"))
    run = prefopt.load_run(folder)
    assert run.output_dir == folder and run.config.objective.name == "ipo"
    assert run.metrics.start == {"val/loss": 0.75, "val/rewards/accuracies": 0.5}
    assert run.metrics.end["val/rewards/accuracies"] == 0.875 and run.metrics.steps == 6
    assert run.metrics.rows == [{"epoch": 0, "step": 0, "val/loss": 0.75},
                                {"epoch": 0, "step": 3, "train/loss": 0.5},
                                {"epoch": 0, "step": 6, "val/loss": 0.25}]
    assert run.metrics.series("val/loss") == [(0, 0.75), (6, 0.25)]
    assert repr(run) == (f"Run('{folder}', objective='ipo', steps=6, val/loss 0.75 -> 0.25, "
                         "val/rewards/accuracies 0.5 -> 0.875)")
    with pytest.raises(FileNotFoundError, match=rf"^{folder / 'policy'}: this run exported no "
                                                r"policy \(export_policy=false"):
        run.policy
    assert run.tokenizer("sort 21")["input_ids"]  # the run's own (tiny) tokenizer, rebuilt


def test_load_run_names_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(RunDirError, match=rf"^{tmp_path / 'notes'}: not a run directory \(it "
                                          r"holds no config\.yaml\)"):
        prefopt.load_run(tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nowhere'}: no such run "):
        prefopt.load_run(tmp_path / "nowhere")


def test_objectives_lists_the_installed_ones_with_their_format():
    found = {info.name: info for info in prefopt.objectives()}
    # The formats of docs/architecture.md's table, for objectives of each.
    assert {name: found[name].batch_format for name in ("dpo", "ipo", "kto", "reinforce")} == {
        "dpo": "pairwise", "ipo": "pairwise", "kto": "unpaired", "reinforce": "prompts"}
    assert found["dpo"].distribution == "prefopt" and found["dpo"].problem is None
    assert "DPO" in found["dpo"].description
    assert list(found) == sorted(found)


def test_import_prefopt_stays_light_and_lists_the_api():
    code = ("import sys, prefopt; heavy = [m for m in ('torch', 'pytorch_lightning', "
            "'prefopt.api') if m in sys.modules]; print(heavy, sorted(prefopt.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    heavy, names = result.stdout.strip().split("] ")
    assert heavy == "["
    assert {"'train'", "'load_run'", "'objectives'", "'Run'", "'api'", "'training'"} <= set(
        names.strip("[]").split(", "))


# -- whole runs -----------------------------------------------------------------------------

@pytest.mark.slow
def test_train_with_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = prefopt.train(trainer=TRAINER, overrides=SYNTHETIC)
    # outputs/<date>/<time> under the working directory, as prefopt-train names runs.
    assert run.output_dir.relative_to(tmp_path).parts[0] == "outputs"
    assert len(run.output_dir.relative_to(tmp_path).parts) == 3
    assert (run.output_dir / "config.yaml").is_file()
    assert run.config.objective.name == "dpo" and run.config.model.name_or_path is None
    # Before training the policy is its reference: every implicit reward is 0 and the DPO
    # loss is -log σ(0) = log 2.
    assert run.metrics.start["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert run.metrics.steps == 2 and set(run.metrics.end) >= {"val/loss", "val/kl"}
    assert [r["step"] for r in run.metrics.rows if "train/loss" in r] == [0, 1]
    assert type(run.policy).__name__ == "LlamaForCausalLM"
    assert run.policy.config.vocab_size == len(run.tokenizer)
    again = prefopt.load_run(run.output_dir)
    assert again.metrics == run.metrics and repr(again) == repr(run)
    assert repr(run).startswith(f"Run('{run.output_dir}', objective='dpo', steps=2, "
                                "val/loss 0.6931 -> ")


@pytest.mark.slow
def test_train_on_records_then_resume_from_the_run_directory(tmp_path):
    out = tmp_path / "run"
    run = prefopt.train("ipo", data={"path": RECORDS, "batch_size": 4, "val_fraction": 0.2},
                        output_dir=out, trainer=TRAINER)
    written = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text()
               .splitlines()]
    assert written == RECORDS and run.config.data.path == str(out / "data" / "train.jsonl")
    report = json.loads((out / "data_report.json").read_text())
    assert (report["train"]["kept"], report["val"]["kept"]) == (8, 2)  # 0.2 of 10 held out
    assert run.metrics.steps == 2

    resumed = prefopt.train(output_dir=out, ckpt_path="last", trainer={"max_steps": 4})
    assert resumed.metrics.steps == 4 and resumed.config.objective.name == "ipo"
    assert resumed.config.data.path == run.config.data.path
    with pytest.raises(ConfigError, match=r"a resume cannot change objective\.beta"):
        prefopt.train(output_dir=out, ckpt_path="last", objective={"beta": 0.3})


@pytest.mark.slow
def test_train_on_a_dataset_twice_in_one_process(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    first = prefopt.train(data=datasets.Dataset.from_list(RECORDS), trainer=TRAINER,
                          overrides=["data.batch_size=4"])
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:8]),
                                   "validation": datasets.Dataset.from_list(RECORDS[8:])})
    second = prefopt.train(data=splits, trainer=TRAINER, overrides=["data.batch_size=4"])
    assert first.output_dir != second.output_dir  # both new, even within one second
    for run in (first, second):
        assert run.metrics.steps == 2 and run.metrics.end
    lines = (second.output_dir / "data" / "val.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == RECORDS[8:]
    assert second.config.data.val_path == str(second.output_dir / "data" / "val.jsonl")
    report = json.loads((second.output_dir / "data_report.json").read_text())
    assert (report["train"]["kept"], report["val"]["kept"]) == (8, 2)


def test_a_data_path_in_overrides_chooses_the_files_preset(tmp_path, monkeypatch):
    # As on the command line (imply_groups): data.path alone means data=files, so the run
    # gets the files preset's max_length (1024), not the synthetic task's (64).
    seen = {}

    def run_composed(cfg, overrides):
        seen["cfg"] = cfg
        return cfg, {}

    monkeypatch.setattr(api, "run_composed", run_composed)
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    prefopt.train(output_dir=tmp_path / "run", overrides=[f"data.path={path}"])
    assert seen["cfg"].data.max_length == 1024 and seen["cfg"].data.path == str(path)


def test_local_paths_of_a_new_run_are_recorded_absolute(compose, tmp_path, monkeypatch):
    """prefopt-train data.path=pairs.jsonl in one directory; prefopt-eval or a resume of
    the run from another must still find the file, the model folder, the mixture's files.
    Names that are no local path (hub ids) stay as given."""
    work = tmp_path / "work"
    (work / "models" / "m").mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl"):
        (work / name).write_text("{}\n")
    monkeypatch.chdir(work)
    cfg = compose("data=files", "data.path=a.jsonl", "data.val_path=owner/some-dataset",
                  "model=hf", "model.name_or_path=models/m", "model.tokenizer=models/m")
    api.absolute_paths(cfg)
    assert cfg.data.path == str(work / "a.jsonl")
    assert cfg.data.val_path == "owner/some-dataset"
    assert cfg.model.name_or_path == cfg.model.tokenizer == str(work / "models" / "m")
    mixed = compose("data=files", "data.mix=[{path: a.jsonl, weight: 0.7}, "
                    "{path: b.jsonl, weight: 0.3}]")
    api.absolute_paths(mixed)
    assert [e.path for e in mixed.data.mix] == [str(work / "a.jsonl"), str(work / "b.jsonl")]
    api.absolute_paths(compose())  # the synthetic task, tiny model: nothing to change


def test_a_dataset_dict_in_a_data_dict_gives_the_splits_it_names(tmp_path, monkeypatch):
    """UltraFeedback's splits are train_prefs and test_prefs: no 'train'. In a data dict
    its `split` and `val_split` choose them, as data.split does on the command line."""
    import datasets

    seen = {}

    def run_composed(cfg, overrides):
        seen["cfg"] = cfg
        return cfg, {}

    monkeypatch.setattr(api, "run_composed", run_composed)
    splits = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(RECORDS[:8]),
                                   "test_prefs": datasets.Dataset.from_list(RECORDS[8:])})
    out = tmp_path / "run"
    prefopt.train(data={"path": splits, "split": "train_prefs", "val_split": "test_prefs"},
                  output_dir=out)
    data = seen["cfg"].data
    assert (data.path, data.val_path) == (str(out / "data" / "train.jsonl"),
                                          str(out / "data" / "val.jsonl"))
    assert data.val_split is None  # the split names were for the DatasetDict
    lines = (out / "data" / "val.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == RECORDS[8:]
    with pytest.raises(ConfigError, match=r"^data\.split='train': the DatasetDict given as "
                                          r"data\.path has the splits \['test_prefs', "
                                          r"'train_prefs'\]; set data\.split to one of them"):
        prefopt.train(data={"path": splits}, output_dir=tmp_path / "other")
