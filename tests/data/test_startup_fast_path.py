"""Start-up on a warm cache (`mtjax.data.startup`): no SeqIO or TensorFlow when the tasks are
unchanged; any change to what they are made of takes the normal path, which rebuilds.

A tiny user task module (a file task: JSONL data, PromptSource templates read at import, an HF
tokenizer) is registered by a run in a subprocess, so `sys.modules` starts clean there.
"""

import json
import os
import subprocess
import sys

import pytest

from mtjax.config import schema
from mtjax.data import registration, startup
from tests.data import tokenizer_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = "startup_tasks"
TASK = "startup_nli"
TEMPLATES_YAML = """\
dataset: startup_nli
templates:
  t1: !Template
    answer_choices: no ||| yes
    id: t1
    jinja: '{{premise}} Question: {{hypothesis}} Yes or no? ||| {{ answer_choices[label] }}'
    name: yes_no
    reference: test
"""
MODULE_SOURCE = '''\
"""Registers the start-up test's task (the run's tokenizer: no vocabulary argument)."""
from mtjax.data import file_tasks, promptsource
from mtjax.eval import metrics

file_tasks.register_file_task(
    {task!r}, {{"train": {train!r}, "validation": {validation!r}}},
    templates=promptsource.load({templates!r}), metric_fns=[metrics.accuracy])
'''
# Run in a subprocess: prepare the run's tasks and cache, draw the first batch, and say what was
# imported and which splits were built.
SCRIPT = '''\
import json, sys
from mtjax.config import schema
from mtjax.data import cache, pipeline, startup

args = json.loads(sys.argv[1])
data = schema.DataConfig(**dict(args, modules=tuple(args["modules"])))
cfg = schema.RunConfig(data=data)
spec = startup.prepare(cfg, splits=("train", "validation"))
options = pipeline.PipelineOptions(lengths={"inputs": data.inputs_length,
                                            "targets": data.targets_length},
                                   batch_size=4, pack=False, prefetch=0,
                                   feature_converter="prefix_lm")
batch = next(iter(pipeline.train_batches(spec, data.cache_dir, options)))
from mtjax.models import hf_meta  # what a run records for export (its tasks' vocabulary)
export = hf_meta.collect(cfg, spec.task_names, "decoder")
print(json.dumps({
    "export": {k: v for k, v in export.items() if not k.startswith("_")},
    "export_tokenizer": sorted(export["_tokenizer"]),
    "spec": [[t.name, t.rate] for t in spec.tasks],
    "tensorflow": "tensorflow" in sys.modules, "seqio": "seqio" in sys.modules,
    "batch": {k: v.tolist() for k, v in sorted(batch.items())},
    "fingerprints": {s: cache.read_manifest(data.cache_dir, spec.tasks[0].name, s)["fingerprint"]
                     for s in ("train", "validation")},
}))
'''


# `mtjax train` in a subprocess; writes what it imported to the file named by its first argument.
CLI_SCRIPT = '''\
import atexit, json, sys
out, argv = sys.argv[1], sys.argv[2:]

def report():
  with open(out, "w") as f:
    json.dump({"tensorflow": "tensorflow" in sys.modules, "seqio": "seqio" in sys.modules}, f)

atexit.register(report)
from mtjax import cli
cli.main(argv)
'''
CLI_CONFIG = '''\
from mtjax.config.schema import (DataConfig, EvalConfig, ModelConfig, OptimizerConfig, RunConfig,
                                 TrainConfig)

def get_config():
  return RunConfig(
      run_dir={run_dir!r},
      data=DataConfig(mixture={task!r}, modules=({module!r},), tokenizer={tokenizer!r},
                      cache_dir={cache_dir!r}, inputs_length=32, targets_length=4, batch_size=8,
                      pack=False, feature_converter="prefix_lm"),
      model=ModelConfig(preset="decoder_test"),
      optimizer=OptimizerConfig(name="adamw", learning_rate=1e-2, warmup_steps=0),
      train=TrainConfig(steps=1, log_every=1, checkpoint_every=1000),
      eval=EvalConfig(at_end=False))
'''


def _jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for premise, hypothesis, label in rows:
      f.write(json.dumps({"premise": premise, "hypothesis": hypothesis, "label": label}) + "\n")


TRAIN = [("a cat sat on the mat", "a cat sat", 1), ("the dog ran home", "the cat ran", 0),
         ("it rained all day", "it was wet", 1), ("she read a book", "she slept", 0),
         ("birds fly south", "birds move", 1), ("the sun is hot", "the sun is cold", 0)]
VALIDATION = [("a man walks", "a man moves", 1), ("the tree is tall", "the tree is short", 0)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("startup")
  texts = [t for p, h, _ in TRAIN + VALIDATION for t in (p, h)] + [
      "Question: Yes or no?", "yes", "no"] + tokenizer_files.SENTENCES
  tokenizer = tokenizer_files.llama3(str(root / "tokenizer"), vocab_size=300, texts=texts)
  data = root / "data"
  data.mkdir()
  train, validation = str(data / "train.jsonl"), str(data / "validation.jsonl")
  _jsonl(train, TRAIN)
  _jsonl(validation, VALIDATION)
  templates = str(root / "templates.yaml")
  with open(templates, "w") as f:
    f.write(TEMPLATES_YAML)
  work = root / "work"  # the run's working directory: its task module is importable from it
  work.mkdir()
  module = work / f"{MODULE}.py"
  module.write_text(MODULE_SOURCE.format(task=TASK, train=train, validation=validation,
                                         templates=templates))
  script = root / "run_startup.py"
  script.write_text(SCRIPT)
  data_args = {"mixture": TASK, "modules": [MODULE], "tokenizer": tokenizer,
               "cache_dir": str(root / "cache"), "inputs_length": 32, "targets_length": 4}
  return {"root": root, "work": str(work), "script": str(script), "module": str(module),
          "train": train, "templates": templates, "tokenizer": tokenizer, "data": data_args}


def _run(world, **changes) -> dict:
  env = {k: v for k, v in os.environ.items() if k != startup.ENV_SWITCH}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  args = dict(world["data"], **changes)
  done = subprocess.run([sys.executable, world["script"], json.dumps(args)], cwd=world["work"],
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _cfg(world, **changes) -> schema.RunConfig:
  args = dict(world["data"], **changes)
  args["modules"] = tuple(args["modules"])
  return schema.RunConfig(data=schema.DataConfig(**args))


def _why(world, **changes) -> str:
  """`startup.why_slow` as the run's subprocess would see it (its cwd and sys.path)."""
  saved_cwd, saved_path, saved_seqio = os.getcwd(), list(sys.path), sys.modules.pop("seqio", None)
  try:
    os.chdir(world["work"])
    sys.path[:] = _subprocess_sys_path(world)
    return startup.why_slow(_cfg(world, **changes), ("train", "validation"))
  finally:
    os.chdir(saved_cwd)
    sys.path[:] = saved_path
    if saved_seqio is not None:
      sys.modules["seqio"] = saved_seqio


_SYS_PATH = {}


def _subprocess_sys_path(world) -> list[str]:
  """The sys.path the run's subprocess has once `prepare` put its working dir on it."""
  if "path" not in _SYS_PATH:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    probe = os.path.join(os.path.dirname(world["script"]), "sys_path_probe.py")
    with open(probe, "w") as f:
      f.write("import json, os, sys\n"
              "if os.getcwd() not in sys.path:\n  sys.path.insert(0, os.getcwd())\n"
              "print(json.dumps(sys.path))\n")
    out = subprocess.run([sys.executable, probe], cwd=world["work"], env=env,
                         capture_output=True, text=True, check=True).stdout
    _SYS_PATH["path"] = json.loads(out)  # (the probe sits next to run_startup.py)
  return list(_SYS_PATH["path"])


def _touch(path, *, content: str | None = None):
  """Changes a file (its content, or only its mtime); returns a function that puts it back."""
  st = os.stat(path)
  with open(path, encoding="utf-8") as f:
    before = f.read()
  if content is not None:
    with open(path, "w", encoding="utf-8") as f:
      f.write(content)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

  def restore():
    with open(path, "w", encoding="utf-8") as f:
      f.write(before)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  return restore


@pytest.fixture(scope="module")
def warm(world):
  """A first run (registers, builds the cache, writes the record) and a second on the warm
  cache."""
  first = _run(world)
  second = _run(world)
  return first, second


def test_second_start_imports_neither_tensorflow_nor_seqio(warm):
  first, second = warm
  assert first["seqio"] and first["tensorflow"]  # the first start registered and built
  assert not second["tensorflow"] and not second["seqio"]
  assert second["spec"] == first["spec"] == [[TASK, 1.0]]
  assert second["batch"] == first["batch"]
  assert second["fingerprints"] == first["fingerprints"]
  # the export metadata a run records: the same from the start-up record's vocabulary facts
  assert second["export"] == first["export"]
  assert second["export"]["vocabulary"]["from"] == "tasks"
  assert second["export_tokenizer"] == first["export_tokenizer"] != []


def test_mtjax_train_on_the_warm_cache_imports_neither(world, warm):
  """The whole start of `mtjax train` (setup, run files, export metadata, the step) on the warm
  cache: neither TensorFlow nor SeqIO is imported."""
  del warm
  _run(world)  # the record is current (another test may have changed and restored a file)
  root = world["root"]
  (root / "run_cli.py").write_text(CLI_SCRIPT)  # next to run_startup.py: the same sys.path
  config = root / "cli_config.py"
  config.write_text(CLI_CONFIG.format(run_dir=str(root / "cli_run"), task=TASK, module=MODULE,
                                      tokenizer=world["tokenizer"],
                                      cache_dir=world["data"]["cache_dir"]))
  env = {k: v for k, v in os.environ.items() if k != startup.ENV_SWITCH}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = root / "cli_imports.json"
  done = subprocess.run([sys.executable, str(root / "run_cli.py"), str(out), "train",
                         "--config", str(config), "--no_progress"], cwd=world["work"], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(out.read_text()) == {"tensorflow": False, "seqio": False}
  with open(root / "cli_run" / "hf" / "export.json") as f:
    assert json.load(f)["vocabulary"]["from"] == "tasks"


def test_nothing_changed_nothing_to_check(world, warm):
  del warm
  assert _why(world) == ""


@pytest.mark.parametrize("change", ["data file", "template", "task module", "tokenizer file"])
def test_a_changed_input_takes_the_normal_path(world, warm, change):
  del warm
  path = {"data file": world["train"], "template": world["templates"],
          "task module": world["module"],
          "tokenizer file": os.path.join(world["tokenizer"], "tokenizer.json")}[change]
  restore = _touch(path)
  try:
    assert path in _why(world)
  finally:
    restore()
  assert _why(world) == ""


@pytest.mark.parametrize("change", [{"inputs_length": 48}, {"targets_length": 8},
                                    {"tokenizer": ""}, {"modules": [MODULE, "json"]},
                                    {"hf_data_dir": "/nowhere"}])
def test_another_run_config_takes_the_normal_path(world, warm, change):
  del warm
  assert _why(world, **change) == "no start-up record"


def test_environment_and_switch(world, warm, monkeypatch):
  del warm
  monkeypatch.setenv("MTJAX_HF_DATA_DIR", "/elsewhere")
  assert _why(world) == "no start-up record"
  monkeypatch.delenv("MTJAX_HF_DATA_DIR")
  monkeypatch.setenv(startup.ENV_SWITCH, "0")
  assert _why(world) == f"{startup.ENV_SWITCH}=0"


def test_a_rebuilt_or_removed_split_takes_the_normal_path(world, warm):
  del warm
  manifest = os.path.join(world["data"]["cache_dir"], TASK, "validation", "manifest.json")
  with open(manifest) as f:
    text = f.read()
  edited = json.loads(text)
  edited["fingerprint"] = "0" * 64
  with open(manifest, "w") as f:
    json.dump(edited, f)
  try:
    assert "the cache of" in _why(world)
  finally:
    with open(manifest, "w") as f:
      f.write(text)
  assert _why(world) == ""


def test_changed_data_rebuilds_then_starts_fast_again(world, warm):
  first, _ = warm
  restore = _touch(world["train"], content="".join(
      json.dumps({"premise": p, "hypothesis": h, "label": 1 - y}) + "\n" for p, h, y in TRAIN))
  try:
    rebuilt = _run(world)
    assert rebuilt["seqio"]  # the normal path: registered, found the split stale, rebuilt it
    assert rebuilt["fingerprints"]["train"] != first["fingerprints"]["train"]
    again = _run(world)
    assert not again["tensorflow"] and not again["seqio"]
    assert again["fingerprints"] == rebuilt["fingerprints"]
    assert again["batch"] == rebuilt["batch"]
  finally:
    restore()


def test_a_deferred_registration_runs_when_needed(monkeypatch):
  calls = []
  monkeypatch.setattr(registration, "_pending", [])
  monkeypatch.setattr(registration, "_vocabularies", {})
  registration.defer(lambda: calls.append(1), {"t": {"targets": {
      "name": "ByteVocabulary", "attrs": {"eos_id": 1, "pad_id": 0, "vocab_size": 259,
                                          "stop_ids": [1]}, "has_files": False}}})
  assert registration.deferred()
  vocab = registration.recorded_vocabulary("t")
  assert (vocab.recorded_name, vocab.eos_id, vocab.stop_ids) == ("ByteVocabulary", 1, (1,))
  assert not hasattr(vocab, "special_ids") and not hasattr(vocab, "files")
  assert registration.recorded_vocabulary("other") is None
  registration.ensure_registered()
  registration.ensure_registered()
  assert calls == [1] and not registration.deferred()
  assert registration.recorded_vocabulary("t") is None  # registered: ask SeqIO


def test_sources_it_cannot_check_cheaply_write_no_record():
  """TFDS, Hugging Face datasets (files resolved at cache time) and remote files: the normal
  path every time."""
  import types

  import seqio

  def fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed

  fn.fingerprint_parts = lambda split: []
  task = types.SimpleNamespace(name="t", output_features={},
                               source=seqio.FunctionDataSource(fn, splits=("train",)))
  with pytest.raises(startup.Uncertain, match="Hugging Face"):
    startup._task_inputs(task, {}, {})  # pylint: disable=protected-access

  def remote(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed

  remote.data_files = ["gs://bucket/train.jsonl"]
  task.source = seqio.FunctionDataSource(remote, splits=("train",))
  with pytest.raises(startup.Uncertain, match="remote"):
    startup._task_inputs(task, {}, {})  # pylint: disable=protected-access
  task.source = seqio.TfdsDataSource(tfds_name="glue/rte:2.0.0")
  with pytest.raises(startup.Uncertain, match="TFDS"):
    startup._task_inputs(task, {}, {})  # pylint: disable=protected-access
