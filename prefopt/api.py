"""The Python API: train, reload and inspect runs from a notebook or a script.

    import prefopt

    run = prefopt.train("ipo", data=records, trainer={"max_steps": 200})
    run.metrics.end["val/rewards/accuracies"], run.policy, run.tokenizer
    prefopt.load_run(run.output_dir), prefopt.objectives()

`train` turns its arguments into the Hydra overrides `prefopt-train` would take, composes
the same config from conf/ and the installed objectives, and runs it through
`run_composed`, which `prefopt-train` calls too: one resume rule, one set of user errors
(`USER_ERRORS`), raised here with the one-line message the console script prints before it
exits. Nothing here calls `sys.exit`.

Records given in memory (a list of dicts, a `datasets.Dataset` or `DatasetDict`) are
written into the run directory, `<output_dir>/data/train.jsonl` (and `val.jsonl`), and the
run reads them from there like any data file: the run directory holds what it was trained
on, and `prefopt-eval` or a resume (`ckpt_path="last"`) find it later, in another process.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import enum
import functools
import json
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefopt import registry
from prefopt.data.output import write_atomically
from prefopt.data.records import RecordError
from prefopt.models import ModelSettingError, ModelSourceError
from prefopt.objective import UnknownSettingError
from prefopt.online.rewards import RewardError
from prefopt.training import rundir
from prefopt.training.config import ConfigError, imply_groups, register_schema
from prefopt.training.metrics import NonFiniteError
from prefopt.training.rundir import RunDirError

log = logging.getLogger(__name__)

__all__ = ["USER_ERRORS", "ObjectiveInfo", "Run", "RunMetrics", "load_run", "objectives",
           "train"]

# Errors that describe bad input or a bad setup: the message says it all. prefopt-train
# prints it as one line and exits 1; the API raises it.
USER_ERRORS = (RecordError, registry.PluginError, ConfigError, NonFiniteError,
               FileNotFoundError, RewardError, UnknownSettingError, RunDirError,
               ModelSourceError, ModelSettingError)


# -- the code path prefopt-train shares ---------------------------------------------------

def prepare() -> None:
    """What composing a config needs: the plugins' metadata read first (two distributions
    claiming one objective or preset name is a PluginError here, not a traceback inside
    Hydra), the schema in Hydra's ConfigStore, the objectives as config group `objective`."""
    registry.discover()
    registry.presets()
    register_schema()
    registry.register_configs()


def run_composed(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict]:
    """Run the config Hydra composed from conf/ and `overrides`: (the config run, the
    validation metrics before and after). A resume (ckpt_path set) runs the run's own
    config.yaml with the overrides' keys on top (`rundir.resume_config`), and training
    refuses those a resume may not change."""
    if cfg.ckpt_path is not None:
        cfg = rundir.resume_config(cfg, list(overrides))
    else:
        absolute_paths(cfg)
    from prefopt.training.train import train as run  # Lightning and the modules: heavy

    return cfg, run(cfg)


# Settings that may name a local file or folder, recorded in config.yaml: prefopt-eval, a
# resume and load_run read them again, perhaps from another working directory.
_PATH_SETTINGS = ("data.path", "data.val_path", "model.name_or_path", "model.tokenizer",
                  "reward.model")


def absolute_paths(cfg: DictConfig) -> None:
    """Make every local path setting of `cfg` absolute, in place (`data.mix` entries'
    paths too); hub ids and dataset names, which are no local path, stay as given."""
    for key in _PATH_SETTINGS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, _local(value), merge=False)
    for entry in OmegaConf.select(cfg, "data.mix", default=None) or []:
        if isinstance(entry.get("path"), str):
            entry.path = _local(entry.path)


def compose(overrides: list[str]) -> DictConfig:
    """The config `prefopt-train <overrides>` would run, from Hydra's compose API. The
    GlobalHydra of a Hydra app already running in this process (the caller's own
    @hydra.main) is set aside meanwhile and put back after. Errors come as one-line
    ConfigErrors (PluginError for an objective nobody provides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.errors import ConfigCompositionException, MissingConfigException

    prepare()
    unknown = registry.unknown_objectives(overrides)
    if unknown:
        raise registry.PluginError(registry.unknown_name_message(unknown[0]))
    # Set the caller's GlobalHydra aside as the very object (Hydra's own backup would
    # deep-copy it): a Hydra app calling train() finds its state as it left it.
    running = Singleton._instances.pop(GlobalHydra, None)
    try:
        with initialize_config_module(config_module="prefopt.conf", version_base="1.3",
                                      job_name="prefopt"):
            return hydra_compose(config_name="train", overrides=overrides)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc)) from None
    except ConfigCompositionException as exc:
        raise ConfigError(_composition_error(exc, overrides)) from None
    finally:
        if running is None:
            Singleton._instances.pop(GlobalHydra, None)
        else:
            Singleton._instances[GlobalHydra] = running


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_option(exc: Exception) -> str:
    """'optimizer=sgd: no such option ...' from Hydra's several-line message."""
    text = str(exc)
    found = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if not found:
        return _first_line(exc)
    group, name = found.groups()
    listed = re.search(rf"Available options in '{re.escape(group)}':\n((?:\t.*\n?)*)", text)
    options = listed.group(1).split() if listed else []
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {group}='{close[0]}'?" if close else ""
    return (f"{group}='{name}': no such option (available: {', '.join(options) or 'none'})."
            f"{hint}")


def _composition_error(exc: Exception, overrides: list[str]) -> str:
    """One line naming the setting Hydra refused, what is wrong with it and the fix."""
    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if not key:
        return f"{_first_line(exc)} ({_first_line(cause)})" if cause else _first_line(exc)
    parent, _, leaf = key.rpartition(".")
    if "not in" in _first_line(cause) or "is not in struct" in _first_line(cause):
        node = _node(parent, overrides)
        known = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
        where = f"'{parent}'" if parent else "the config"
        if parent == "objective" and node is not None:  # as UnknownSettingError words it
            where, known = f"objective '{node.name}'", [k for k in known if k != "name"]
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f" Did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
        listed = f" (its settings: {', '.join(known)})" if known else ""
        extra = ""
        if parent in ("trainer", "logger"):  # open mappings: new keys are allowed, forced
            extra = (f" To pass a new {parent} argument, force it with a '+': "
                     f"{parent}={{'+{leaf}': ...}} or overrides=['+{key}=...'].")
        return f"{key}: {where} has no setting '{leaf}'{listed}.{hint}{extra}"
    return f"{key}: {_first_line(cause)}"


def _node(parent: str, overrides: list[str]):
    """The node `parent` of the config composed with only the group choices of
    `overrides` (which composed fine, or Hydra would have said so first); None if that
    fails too."""
    choices = [o for o in overrides if "." not in o.split("=", 1)[0]
               and o.split("=", 1)[0].lstrip("+") in _groups()]
    try:
        cfg = compose(choices)
    except ConfigError:
        return None
    return OmegaConf.select(cfg, parent) if parent else cfg


# -- Python values -> Hydra overrides -----------------------------------------------------

@functools.cache
def _groups() -> frozenset[str]:
    """Config groups (a string for one of them picks an option: trainer="ddp"); the
    folders of conf/ and the objectives' group."""
    conf = resources.files("prefopt.conf")
    return frozenset({p.name for p in conf.iterdir() if p.is_dir()
                      and not p.name.startswith(("_", "."))} - {"hydra"} | {"objective"})


def _quote(text: str) -> str:
    """A string in Hydra's override grammar: single-quoted; a quote is escaped with a
    backslash, and so are backslashes that precede a quote or end the string."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def _value(key: str, value: Any) -> str:
    """`value` written as the right-hand side of a Hydra override of `key`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _value(key, value.value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return _quote(os.fspath(value))
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(f'{key}.{k}', v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(f"{key}[{i}]", v) for i, v in enumerate(value)) + "]"
    raise ConfigError(f"{key}={value!r:.40} ({type(value).__name__}): not a setting's value; "
                      "give a number, a string, a bool, None, or a list or dict of those")


def _settings(prefix: str, settings: Mapping) -> list[str]:
    """`{"max_steps": 20, "+detect_anomaly": True}` under `trainer` ->
    ["trainer.max_steps=20", "+trainer.detect_anomaly=true"]: nested dicts become dotted
    keys; a key starting with '+' adds a key the config does not have (as on the command
    line), which only open mappings (trainer, logger) accept."""
    found = []
    for key, value in settings.items():
        key = str(key)
        force, name = key.startswith("+"), f"{prefix}.{key.lstrip('+')}"
        if isinstance(value, Mapping) and value and not force:
            found += _settings(name, value)
        else:
            found.append(f"{'+' if force else ''}{name}={_value(name, value)}")
    return found


def _objective_overrides(objective) -> list[str]:
    if objective is None:
        return []
    if isinstance(objective, str):
        return [f"objective={objective}"]
    if isinstance(objective, Mapping):
        settings = dict(objective)
        name = settings.pop("name", None)
        return ([f"objective={name}"] if name else []) + _settings("objective", settings)
    raise ConfigError(f"objective={objective!r}: give an objective's name (objective='ipo'), "
                      "or a dict of its settings with its name (objective={'name': 'ipo', "
                      "'beta': 0.5})")


def _local(source: str | os.PathLike) -> str:
    """An existing local path made absolute (the run's config.yaml must still find it from
    another working directory); anything else (a hub id) as given."""
    path = Path(source).expanduser()
    return str(path.absolute()) if path.exists() else os.fspath(source)


def _model_overrides(model) -> list[str]:
    if model is None:
        return []
    if model == "tiny":
        return ["model=tiny"]
    if isinstance(model, (str, os.PathLike)):
        return ["model=hf", f"model.name_or_path={_quote(_local(model))}"]
    if isinstance(model, Mapping):
        group = "hf" if model.get("name_or_path") else "tiny"
        settings = dict(model)
        if settings.get("name_or_path"):
            settings["name_or_path"] = _local(settings["name_or_path"])
        return [f"model={group}", *_settings("model", settings)]
    raise ConfigError(f"model={model!r}: give 'tiny', a model folder or hub id, or a dict of "
                      "model settings ({'name_or_path': ..., 'lora': {'r': 8}})")


# -- records given in memory --------------------------------------------------------------

_VAL_SPLITS = ("validation", "val", "test")


def _datasets_type(name: str):
    """datasets.<name> if the caller has imported datasets (an object of it can only come
    from there), else None: `prefopt.train` does not import datasets for nothing."""
    module = sys.modules.get("datasets")
    return getattr(module, name, None)


def _in_memory(value) -> bool:
    dataset = _datasets_type("Dataset")
    return isinstance(value, (list, tuple)) or (dataset is not None
                                                and isinstance(value, dataset))


def _data_settings(data) -> dict:
    """`data` as a dict of data settings, whose path and val_path may be in memory."""
    dataset_dict = _datasets_type("DatasetDict")
    if dataset_dict is not None and isinstance(data, dataset_dict):
        unknown = sorted(set(data) - {"train", *_VAL_SPLITS})
        val = [name for name in _VAL_SPLITS if name in data]
        if "train" not in data or unknown or len(val) > 1:
            raise ConfigError(
                f"data: a DatasetDict with splits {sorted(data)}: prefopt.train reads a "
                "'train' split and at most one validation split (validation, val or test); "
                "give DatasetDict({'train': ..., 'validation': ...})")
        return {"path": data["train"], "val_path": data[val[0]] if val else None}
    if isinstance(data, (str, os.PathLike)) or _in_memory(data):
        return {"path": data}
    if isinstance(data, Mapping):
        settings = dict(data)
        if dataset_dict is not None and isinstance(settings.get("path"), dataset_dict):
            chosen = _splits_of(settings)  # the splits become the records written out
            return {**{k: v for k, v in settings.items() if k not in ("split", "val_split")},
                    **chosen}
        return settings
    raise ConfigError(f"data={data!r:.40} ({type(data).__name__}): not data prefopt.train "
                      "can read; give "
                      "None (the synthetic task), a file or dataset path, a list of record "
                      "dicts, a datasets.Dataset or DatasetDict, or a dict of data settings")


def _splits_of(settings: dict) -> dict:
    """{path, val_path}: the splits a settings dict names (`split`, default train;
    `val_split`) taken out of its in-memory DatasetDict `path`."""
    splits = settings["path"]
    split, val_split = settings.get("split") or "train", settings.get("val_split")
    for key, name in (("split", split), ("val_split", val_split)):
        if name is not None and name not in splits:
            raise ConfigError(f"data.{key}={name!r}: the DatasetDict given as data.path has "
                              f"the splits {sorted(splits)}; set data.{key} to one of them")
    if settings.get("val_path") is not None and val_split is not None:
        raise ConfigError("data.val_path and data.val_split both given: keep one")
    return {"path": splits[split],
            "val_path": splits[val_split] if val_split else settings.get("val_path")}


def _data_overrides(data, out: Path) -> tuple[list[str], dict[Path, bytes]]:
    """(overrides, {file in the run directory: the records to write there, as JSON
    lines})."""
    if data is None:
        return [], {}
    settings = _data_settings(data)
    files = {}
    for key, name in (("path", "train.jsonl"), ("val_path", "val.jsonl")):
        value = settings.get(key)
        if _in_memory(value):
            files[out / "data" / name] = _jsonl(f"data.{key}", value)
            settings[key] = str(out / "data" / name)
        elif isinstance(value, (str, os.PathLike)):
            settings[key] = _local(value)
    group = "files" if settings.get("path") is not None else "synthetic"
    return [f"data={group}", *_settings("data", settings)], files


def _jsonl(setting: str, records) -> bytes:
    """Records as JSON lines; RecordError naming the record and field that JSON cannot
    hold. Record i is line i + 1 of the file."""
    lines = []
    for i, record in enumerate(records):
        where = f"{setting}[{i}]"
        if not isinstance(record, Mapping):
            raise RecordError(where, f"a record must be a dict of fields, not {record!r:.40} "
                              f"({type(record).__name__}); give e.g. {{'prompt': ..., "
                              "'chosen': ..., 'rejected': ...}")
        try:
            lines.append(json.dumps(dict(record), ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError):
            for field, value in record.items():
                try:
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError):
                    raise RecordError(where, f"{value!r:.40} ({type(value).__name__}) cannot "
                                      "be written as JSON; give strings, numbers, lists or "
                                      "dicts", field=str(field)) from None
            raise
    if not lines:
        raise RecordError(setting, "holds no records; give at least two (some are held out "
                          "for validation)")
    return ("\n".join(lines) + "\n").encode()


def _write_records(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f, data=data: f.write(data))


# -- train --------------------------------------------------------------------------------

def overrides_for(objective=None, model=None, data=None, output_dir: Path | None = None,
                  overrides=(), **settings) -> tuple[list[str], dict[Path, bytes]]:
    """(the command-line overrides that `train`'s arguments stand for, {file in the run
    directory: records given in memory, as JSON lines, to write there first})."""
    wanted = [f"output_dir={_quote(str(output_dir))}"] if output_dir is not None else []
    data_overrides, files = _data_overrides(data, output_dir or Path("."))
    if files and settings.get("ckpt_path") is not None:
        raise ConfigError("data: a resume trains on the run's own records (its config.yaml "
                          "names them); leave data out when giving ckpt_path")
    wanted += [*_objective_overrides(objective), *_model_overrides(model), *data_overrides]
    for key, value in settings.items():
        if isinstance(value, Mapping):
            wanted += _settings(key, value)
        elif isinstance(value, str) and key in _groups():
            wanted.append(f"{key}={value}")  # a group's option: trainer="ddp"
        else:
            wanted.append(f"{key}={_value(key, value)}")
    return wanted + list(overrides), files


def _new_output_dir() -> Path:
    """outputs/<date>/<time> under the working directory, as prefopt-train names its runs;
    -2, -3, ... appended if that exists (two runs in one second). Created here, so that two
    processes never pick the same one."""
    now = datetime.datetime.now()
    base = Path.cwd() / "outputs" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    candidate, number = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")


def train(objective: str | Mapping | None = None, model: str | os.PathLike | Mapping | None = None,
          data=None, output_dir: str | os.PathLike | None = None, *,
          overrides: list[str] | tuple[str, ...] = (), **settings) -> Run:
    """Train as `prefopt-train` would, and return the finished `Run`.

    objective: an installed objective's name ('dpo', 'ipo', a third party's), or a dict of
        its settings with its name: {'name': 'ipo', 'beta': 0.5}; None: dpo.
    model: 'tiny' (the built-in tiny model), a model folder or hub id (model=hf), or a dict
        of model settings ({'name_or_path': ..., 'lora': {'r': 8}}); None: tiny.
    data: None (the built-in synthetic task), a file / `save_to_disk` folder / datasets name
        (data=files), a list of record dicts, a `datasets.Dataset`, a `DatasetDict` (train
        and validation splits), or a dict of data settings whose path and val_path may be
        any of those. Records in memory are written to <output_dir>/data/*.jsonl first.
    output_dir: the run directory; None: a new outputs/<date>/<time> under the working
        directory. To resume a run: its output_dir and ckpt_path='last'.
    overrides: Hydra overrides as on the command line, applied last: ['objective.beta=0.2'].
    settings: any other setting of the config as a keyword: a value (seed=1,
        ckpt_path='last', reference='cached'), a dict for a section (trainer={'max_steps':
        20}, optimizer={'lr': 1e-5}), or a string for a config group's option
        (scheduler='constant', trainer='ddp', logger='tensorboard'). In a dict, '+key'
        adds a key that is not in the config (trainer={'+detect_anomaly': True}).

    On a resume, leave objective, model and data out: the run's config.yaml has them.
    A bad setting raises one of `USER_ERRORS` (the message prefopt-train would print).
    """
    if settings.get("ckpt_path") == "last" and output_dir is None:
        raise ConfigError("ckpt_path='last' resumes the run in output_dir: give the run's "
                          "folder, prefopt.train(output_dir=<run>, ckpt_path='last')")
    created = output_dir is None
    out = _new_output_dir() if created else Path(output_dir).expanduser().absolute()
    try:
        wanted, files = overrides_for(objective, model, data, out, overrides, **settings)
        # overrides=['data.path=x'] means data=files, as on the command line.
        wanted, notes = imply_groups(wanted)
        for note in notes:
            log.info("%s", note)
        cfg = compose(wanted)
        if files:
            rundir.refuse_existing(out)  # before writing data/ into another run
            _write_records(files)
        cfg, _ = run_composed(cfg, wanted)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing was written: leave no empty run directory behind
        raise
    return Run(out, cfg)


# -- runs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """What a run measured. `start` and `end`: the validation metrics before and after
    training (summary.json; empty while the run has not finished); `steps`: optimizer steps
    (None then); `rows`: metrics.csv, one dict per logged row, empty cells left out, epoch
    and step as ints and every metric as a float."""

    start: dict[str, float]
    end: dict[str, float]
    steps: int | None
    rows: list[dict[str, float]]

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) for every row that logged `name`, e.g. series('train/loss')."""
        return [(row["step"], row[name]) for row in self.rows if name in row]


def _read_rows(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: int(float(v)) if k in ("epoch", "step") else float(v)
             for k, v in row.items() if v not in ("", None)} for row in rows]


class Run:
    """A run directory: its config, what it measured, and its exported policy, loaded
    with transformers on first use."""

    def __init__(self, output_dir: str | os.PathLike, config: DictConfig):
        self.output_dir = Path(output_dir)
        self.config = config

    @functools.cached_property
    def metrics(self) -> RunMetrics:
        path = self.output_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        return RunMetrics(start=summary.get("start", {}), end=summary.get("end", {}),
                          steps=summary.get("steps"),
                          rows=_read_rows(self.output_dir / "metrics.csv"))

    def _policy_dir(self) -> Path:
        path = self.output_dir / "policy"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: this run exported no policy (export_policy=false, or the run did "
                "not finish); train with export_policy=True, or evaluate the weights of "
                f"{self.output_dir / 'checkpoints' / 'last.ckpt'} with prefopt-eval")
        return path

    @functools.cached_property
    def policy(self):
        """The exported policy/ (a sequence classifier for a reward model's run)."""
        import transformers

        path = self._policy_dir()
        architectures = json.loads((path / "config.json").read_text()).get("architectures")
        classifier = any(a.endswith("ForSequenceClassification") for a in architectures or ())
        auto = (transformers.AutoModelForSequenceClassification if classifier
                else transformers.AutoModelForCausalLM)
        return auto.from_pretrained(path)

    @functools.cached_property
    def tokenizer(self):
        """The exported policy's tokenizer; without policy/, the one the run trained with,
        built again from its model settings."""
        path = self.output_dir / "policy"
        if (path / "tokenizer_config.json").is_file():
            import transformers

            return transformers.AutoTokenizer.from_pretrained(path)
        from prefopt.models import build_tokenizer

        return build_tokenizer(OmegaConf.to_object(self.config.model))

    def __repr__(self) -> str:
        metrics = self.metrics
        shown = [k for k in ("val/loss", "val/rewards/accuracies") if k in metrics.end] \
            or sorted(metrics.end)[:2]
        changes = "".join(f", {k} {metrics.start.get(k, math.nan):.4g} -> {metrics.end[k]:.4g}"
                          for k in shown)
        steps = f"steps={metrics.steps}" if metrics.steps is not None else "unfinished"
        return (f"Run('{self.output_dir}', objective={self.config.objective.name!r}, "
                f"{steps}{changes})")


def load_run(output_dir: str | os.PathLike) -> Run:
    """The run in `output_dir` (a folder prefopt.train or prefopt-train wrote)."""
    from prefopt.evaluate import load_run_config

    out = Path(output_dir).expanduser().absolute()
    if not out.exists():
        raise FileNotFoundError(f"{output_dir}: no such run directory; give the output_dir of "
                                "a prefopt.train() or prefopt-train run")
    if out.is_dir() and not (out / "config.yaml").is_file():
        raise RunDirError(f"{output_dir}: not a run directory (it holds no config.yaml); give "
                          "the output_dir of a prefopt.train() or prefopt-train run")
    return Run(out, load_run_config(out))


# -- objectives ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ObjectiveInfo:
    """An installed objective, as prefopt-plugins lists it. `problem`: why it cannot be
    loaded (then batch_format is None)."""

    name: str
    batch_format: str | None
    description: str
    distribution: str
    version: str
    problem: str | None = None


def _describe(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return cls.description or (doc.splitlines()[0] if doc else "")


def objectives() -> list[ObjectiveInfo]:
    """The objectives found through the 'prefopt.objectives' entry points, by name. Each
    is imported (a listing: that is the point); one that fails to load is listed with its
    problem instead of raising."""
    found = []
    for name, info in sorted(registry.discover().items()):
        try:
            cls = registry.load(name)
        except registry.PluginError as exc:
            found.append(ObjectiveInfo(name, None, "", info.distribution, info.version,
                                       problem=str(exc)))
            continue
        found.append(ObjectiveInfo(name, cls.batch_format.value, _describe(cls),
                                   info.distribution, info.version))
    return found
