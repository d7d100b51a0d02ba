"""Config and gin files, and a soft prompt, read from gs:// (a GCS API server on 127.0.0.1)."""

import os

import numpy as np

from mtjax import fs
from mtjax.config import gin_config, python_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _upload(local: str, url: str) -> None:
  with open(local) as f:
    fs.write_text(url, f.read())


def test_python_config_from_a_bucket_equals_the_local_file(gcs_bucket):
  local = os.path.join(ROOT, "configs", "quickstart.py")
  _upload(local, f"{gcs_bucket}/configs/quickstart.py")
  remote = python_config.load(f"{gcs_bucket}/configs/quickstart.py", ["train.steps=7"])
  expected = python_config.load(local, ["train.steps=7"])
  assert remote == expected and remote.train.steps == 7


def test_gin_file_from_a_bucket_with_an_include_next_to_it(gcs_bucket):
  _upload(os.path.join(ROOT, "configs", "quickstart.gin"), f"{gcs_bucket}/gin/quickstart.gin")
  fs.write_text(f"{gcs_bucket}/gin/mine.gin",
                f"include '{gcs_bucket}/gin/quickstart.gin'\nTRAIN_STEPS = 9\n")
  remote = gin_config.load([f"{gcs_bucket}/gin/mine.gin"])
  local = gin_config.load([os.path.join(ROOT, "configs", "quickstart.gin")],
                          ["TRAIN_STEPS=9"])
  assert remote == local and remote.train.steps == 9


def test_prompt_table_round_trips_through_a_bucket(gcs_bucket):
  from mtjax.peft import prompts  # pylint: disable=g-import-not-at-top

  table = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  prompts.save(f"{gcs_bucket}/prompt", table, {"tasks": ["a", "b"]})
  loaded, meta = prompts.load(f"{gcs_bucket}/prompt")
  np.testing.assert_array_equal(loaded, table)
  assert meta["tasks"] == ["a", "b"] and meta["length"] == 3
