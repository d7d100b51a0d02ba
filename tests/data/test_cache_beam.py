"""The cache built by the Apache Beam engine (`mtjax/data/caching/beam.py`) on Beam's local
DirectRunner is the built-in engine's cache, byte for byte, and resumes from a build's finished
units; `mtjax cache --engine=beam` without Beam installed is one `error:` line.

The tasks and helpers are test_cache_build.py's (file tasks in three formats, SentencePiece and
byte vocabularies, blocks of 16 rows: 12 units over 3 splits).
"""

import os
import sys

import pytest

from mtjax import cli, errors
from mtjax.data import cache
from mtjax.data.caching import units as caching_units
from tests.data.test_cache_build import _same, data  # noqa: F401  (data: the fixture)

beam = pytest.importorskip("apache_beam", reason="the beam extra (pip install 'mtjax[beam]') "
                           "is not installed")


@pytest.fixture
def loopback(monkeypatch):
  """Beam's worker processes talk to the runner over gRPC servers it binds on every interface
  ([::]); here they are bound on 127.0.0.1. Yields the addresses bound."""
  import grpc

  bound, original = [], grpc.server

  def server(*args, **kwargs):
    made = original(*args, **kwargs)
    add = made.add_insecure_port

    def add_insecure_port(address):
      bound.append(address.replace("[::]", "127.0.0.1"))
      return add(bound[-1])

    made.add_insecure_port = add_insecure_port
    return made

  monkeypatch.setattr(grpc, "server", server)
  yield bound


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_beam_pipeline_writes_the_built_in_caches_bytes_and_resumes(mode, data, tmp_path,
                                                                    monkeypatch, loopback):
  """`mtjax cache --engine=beam` on the DirectRunner in this process (one worker), and
  `cache_mixture(engine="beam")` on 2 worker processes (the plan's jobs travel through the cache
  dir, as to a cluster's workers)."""
  local, piped = str(tmp_path / "local"), str(tmp_path / "beam")
  cache.cache_mixture("build_mix", local, num_shards=2, tf_free=True)
  # A build that was killed after 3 of its units: the pipeline builds only the other 9.
  _, jobs, _ = cache.plan_mixture("build_mix", piped, num_shards=2, tf_free=True)
  ledger = caching_units.Ledger(piped)
  for unit in jobs[0].units[:3]:
    examples, prepared, auto = jobs[0].producer(jobs[0].payload, unit.split, unit.start,
                                                unit.stop)
    ledger.write(unit, examples, jobs[0].token_features, prepared, auto)
  calls = []
  original = caching_units.Ledger.write
  monkeypatch.setattr(caching_units.Ledger, "write",
                      lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
  if mode == "in_memory":
    monkeypatch.syspath_prepend(data)  # --module=build_tasks
    cli.main(["cache", "--mixture_or_task=build_mix", "--module=build_tasks",
              f"--cache_dir={piped}", "--num_shards=2", "--path=tf_free", "--engine=beam",
              "--beam_options=--runner=DirectRunner --direct_running_mode=in_memory"])
    assert len(calls) == 12 - 3  # (the pipeline ran in this process: its writes are counted)
  else:
    cache.cache_mixture("build_mix", piped, num_shards=2, tf_free=True, engine="beam",
                        pipeline_options=["--direct_running_mode=multi_processing",
                                          "--direct_num_workers=2"])
  assert all(a.startswith("127.0.0.1:") for a in loopback), loopback
  files = _same(local, piped)
  assert "build_nli/train/manifest.json" in files and "mixtures/build_mix.json" in files
  assert not os.path.exists(os.path.join(piped, ".build"))  # units and the jobs file removed


def _error_line(capsys, *flags) -> str:
  with pytest.raises(SystemExit) as exit_:
    cli.main(["cache", "--mixture_or_task=build_mix", "--module=build_tasks", *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_beam_engine_errors_are_one_line(data, tmp_path, monkeypatch, capsys):
  monkeypatch.syspath_prepend(data)
  out = f"--cache_dir={tmp_path / 'c'}"
  with pytest.raises(errors.ConfigError, match="takes no num_processes"):
    cache.cache_mixture("build_mix", str(tmp_path / "c"), engine="beam", num_processes=2,
                        process_id=0)
  assert "--engine=beam" in _error_line(capsys, out, "--beam_options=--runner=DirectRunner")
  assert "NoSuchRunner" in _error_line(capsys, out, "--engine=beam",
                                       "--beam_options=--runner=NoSuchRunner")
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if the extra were not installed
  assert "pip install 'mtjax[beam]'" in _error_line(capsys, out, "--engine=beam")
