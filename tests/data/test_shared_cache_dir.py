"""Several runs may share one cache dir and write it at the same moment (CI saw a mixture spec's
shared temp file renamed away under a second writer). Every writer must finish, and readers must
see a complete file or directory."""

import json
import os
import threading

from mtjax.data import cache, mixing


def _hammer(fn, threads=8, times=40):
  errors = []

  def work(i):
    try:
      for j in range(times):
        fn(i, j)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
  for t in pool:
    t.start()
  for t in pool:
    t.join()
  return errors


def test_concurrent_mixture_spec_writers_all_succeed(tmp_path):
  spec = mixing.MixtureSpec("shared", (mixing.TaskRate("a", 1.0), mixing.TaskRate("b", 2.0)))
  errors = _hammer(lambda i, j: mixing.write_spec(spec, str(tmp_path)))
  assert not errors, errors[:3]
  assert mixing.read_spec("shared", str(tmp_path)) == spec
  assert os.listdir(tmp_path / "mixtures") == ["shared.json"]  # no temp files left


def _built(tmp_path, name, fp):
  folder = tmp_path / "build" / name
  folder.mkdir(parents=True)
  (folder / cache.MANIFEST).write_text(json.dumps({"fingerprint": fp, "builder": name}))
  (folder / "data").write_text(name)
  return str(folder)


def test_publish_keeps_the_first_cache_of_a_definition_and_replaces_a_stale_one(tmp_path):
  final = str(tmp_path / "task" / "train")
  os.makedirs(os.path.dirname(final))
  cache._publish(_built(tmp_path, "old", "fp-old"), final, "fp-old")
  cache._publish(_built(tmp_path, "new1", "fp-new"), final, "fp-new")  # stale one replaced
  cache._publish(_built(tmp_path, "new2", "fp-new"), final, "fp-new")  # same definition: kept
  with open(os.path.join(final, cache.MANIFEST)) as f:
    assert json.load(f)["builder"] == "new1"
  assert os.listdir(tmp_path / "task") == ["train"]  # nothing stale or temporary left
  assert os.listdir(tmp_path / "build") == []


def test_concurrent_publishers_of_one_split_leave_one_complete_cache(tmp_path):
  final = str(tmp_path / "task" / "train")
  os.makedirs(os.path.dirname(final))
  errors = _hammer(lambda i, j: cache._publish(_built(tmp_path, f"b{i}-{j}", f"fp{j % 3}"),
                                               final, f"fp{j % 3}"), times=15)
  assert not errors, errors[:3]
  with open(os.path.join(final, cache.MANIFEST)) as f:
    builder = json.load(f)["builder"]
  assert (tmp_path / "task" / "train" / "data").read_text() == builder
  assert os.listdir(tmp_path / "task") == ["train"]
