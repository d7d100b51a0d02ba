"""Flan 2022 on small releases in the Hub's layout: task names, caps, the nested mixtures and
their flattened rates (hand-computed), re-weighted variants, what is read, missing releases."""

import dataclasses
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

from mtjax import errors
from mtjax.collections import catalog, flan2022, prerendered
from mtjax.data import cache, mixing, pipeline
from tests.collections import hub_layouts as L

TT = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
SOURCES = {"flan2021": "Flan2021", "t0": "P3", "niv2": "NIv2", "cot": "CoT", "dialog": "Dialog"}
# submix -> [(task_name, {template_type: rows})]
DATA = {
    "flan2021": [("glue/mnli:2.0.0", {"zs_opt": 3, "zs_noopt": 2, "fs_opt": 4, "fs_noopt": 1}),
                 ("super_glue/rte:1.0.2", dict.fromkeys(TT, 1))],
    "t0": [("adversarial_qa_dbert_answer_the_following_q", dict.fromkeys(TT, 2))],
    "niv2": [("task1209_atomic_classification_objectuse", {"zs_opt": 2, "fs_opt": 3})],
    "cot": [("cot_gsm8k", {"zs_opt": 2, "fs_opt": 2}),
            ("cot_gsm8k_ii", {"zs_opt": 1, "fs_opt": 1})],
    "dialog": [("wiki_dialog", {"zs_opt": 1, "fs_opt": 1}),
               ("qrecc_ii", {"zs_opt": 2, "fs_opt": 1})],
}


def _rows(submix):
  """The release's rows, the groups interleaved (so a task's rows span row groups and files)."""
  groups = [[{"inputs": f"{task} | {tt} | input {i}", "targets": f"target {i} of {task} {tt}",
              "task_source": SOURCES[submix], "task_name": task, "template_type": tt}
             for i in range(n)] for task, counts in DATA[submix] for tt, n in counts.items()]
  out = []
  while any(groups):
    out += [g.pop(0) for g in groups if g]
  return out


def _write_release(folder, rows, files=1):
  """`data/train-0000i-of-0000n-<hash>.parquet` as on the Hub, two rows per row group."""
  paths = []
  for i in range(files):
    part = rows[i::files]
    path = os.path.join(folder, "data", f"train-{i:05d}-of-{files:05d}-{i}a6693a25fc4a25e.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({k: [r[k] for r in part] for k in flan2022.COLUMNS}), path,
                   row_group_size=2)
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("flan")
  for sub in flan2022.SUBMIXES:
    _write_release(str(root / sub.repo), _rows(sub.key), files=2 if sub.key == "flan2021" else 1)
  return str(root)


@pytest.fixture(autouse=True)
def unrecorded_sizes(monkeypatch):
  """The releases here are small: no check against the real releases' recorded sizes."""
  submixes = tuple(dataclasses.replace(s, rows=None) for s in flan2022.SUBMIXES)
  monkeypatch.setattr(flan2022, "SUBMIXES", submixes)
  monkeypatch.setattr(flan2022, "BY_KEY", {s.key: s for s in submixes})


@pytest.fixture
def collection(data_root):
  return flan2022.register(data_root=data_root)


def test_task_names_follow_the_sanitizing_rule(collection):
  want = ([f"flan2021_glue_mnli_2_0_0_{t}" for t in TT]
          + [f"flan2021_super_glue_rte_1_0_2_{t}" for t in TT]
          + [f"t0_submix_adversarial_qa_dbert_answer_the_following_q_{t}" for t in TT]
          + [f"niv2_task1209_atomic_classification_objectuse_{t}" for t in ("zs_opt", "fs_opt")]
          + [f"cot_cot_gsm8k{ii}_{t}" for ii in ("", "_ii") for t in ("zs_opt", "fs_opt")]
          + [f"dialog_{n}_{t}" for n in ("wiki_dialog", "qrecc_ii") for t in ("zs_opt", "fs_opt")])
  assert sorted(collection.tasks) == sorted(want)
  assert all(n in seqio.TaskRegistry.names() for n in want)
  task = collection.tasks["flan2021_glue_mnli_2_0_0_fs_opt"]
  assert (task.task_name, task.template_type, task.rows, task.inversion) == (
      "glue/mnli:2.0.0", "fs_opt", 4, False)
  assert collection.tasks["cot_cot_gsm8k_ii_zs_opt"].inversion
  # Every name is one the catalog sends to this collection.
  for name in list(collection.tasks) + list(collection.mixtures):
    assert catalog.collection_of(name) == "flan2022", name
  # Names that would coincide get a hash of their original.
  names = prerendered.unique_names(["glue/mnli:2.0.0", "glue_mnli_2.0.0", "ok"])
  assert names["ok"] == "ok"
  assert names["glue/mnli:2.0.0"] != names["glue_mnli_2.0.0"]
  assert all(names[n].startswith("glue_mnli_2_0_0_")
             for n in ("glue/mnli:2.0.0", "glue_mnli_2.0.0"))


def test_mixtures_nest_as_flan_and_flatten_to_the_hand_computed_rates(collection):
  m = collection.mixtures
  assert m["flan2022"] == [("flan2021_submix", 0.4), ("t0_submix", 0.32), ("niv2_submix", 0.2),
                           ("cot_submix", 0.05), ("dialog_submix", 0.03)]
  assert m["flan2021_submix"] == [(f"flan2021_{t}", 0.25) for t in TT]
  assert m["niv2_submix"] == [("niv2_zs_opt", 0.5), ("niv2_fs_opt", 0.5)]
  assert m["flan2021_zs_opt"] == [("flan2021_glue_mnli_2_0_0_zs_opt", 3.0),
                                  ("flan2021_super_glue_rte_1_0_2_zs_opt", 1.0)]
  assert m["cot_zs_opt"] == [("cot_zs_opt_base", 1.0), ("cot_zs_opt_ii", 0.3)]
  assert m["cot_zs_opt_ii"] == [("cot_cot_gsm8k_ii_zs_opt", 1.0)]
  assert "flan2022" in seqio.MixtureRegistry.names()
  assert seqio.get_mixture_or_task("flan2022_submix").get_rate(
      seqio.get_mixture_or_task("niv2_task1209_atomic_classification_objectuse_zs_opt")) == \
      pytest.approx(0.2 * 0.5)

  f, t0, nv, cot, dia = 0.4 * 0.25, 0.32 * 0.25, 0.2 * 0.5, 0.05 * 0.5, 0.03 * 0.5
  want = {
      "flan2021_glue_mnli_2_0_0_zs_opt": f * 3 / 4, "flan2021_super_glue_rte_1_0_2_zs_opt": f / 4,
      "flan2021_glue_mnli_2_0_0_zs_noopt": f * 2 / 3,
      "flan2021_super_glue_rte_1_0_2_zs_noopt": f / 3,
      "flan2021_glue_mnli_2_0_0_fs_opt": f * 4 / 5, "flan2021_super_glue_rte_1_0_2_fs_opt": f / 5,
      "flan2021_glue_mnli_2_0_0_fs_noopt": f / 2, "flan2021_super_glue_rte_1_0_2_fs_noopt": f / 2,
      **{f"t0_submix_adversarial_qa_dbert_answer_the_following_q_{t}": t0 for t in TT},
      "niv2_task1209_atomic_classification_objectuse_zs_opt": nv,
      "niv2_task1209_atomic_classification_objectuse_fs_opt": nv,
      "cot_cot_gsm8k_zs_opt": cot / 1.3, "cot_cot_gsm8k_ii_zs_opt": cot * 0.3 / 1.3,
      "cot_cot_gsm8k_fs_opt": cot / 1.3, "cot_cot_gsm8k_ii_fs_opt": cot * 0.3 / 1.3,
      "dialog_wiki_dialog_zs_opt": dia / 1.3, "dialog_qrecc_ii_zs_opt": dia * 0.3 / 1.3,
      "dialog_wiki_dialog_fs_opt": dia / 1.3, "dialog_qrecc_ii_fs_opt": dia * 0.3 / 1.3,
  }
  assert sum(want.values()) == pytest.approx(1.0)
  spec = mixing.from_seqio("flan2022")
  assert dict(zip(spec.task_names, spec.weights)) == pytest.approx(want)


def test_caps_apply_per_task_and_template_type(data_root, collection, monkeypatch):
  monkeypatch.setitem(flan2022.CAPS, "flan2021", 2)
  flan2022.register(data_root=data_root)
  assert flan2022.COLLECTION.mixtures["flan2021_fs_opt"] == [
      ("flan2021_glue_mnli_2_0_0_fs_opt", 2.0), ("flan2021_super_glue_rte_1_0_2_fs_opt", 1.0)]


def test_a_release_of_another_size_is_registered_with_a_warning(data_root, monkeypatch, caplog):
  cot = dataclasses.replace(flan2022.BY_KEY["cot"], rows=183_848)
  monkeypatch.setitem(flan2022.BY_KEY, "cot", cot)
  monkeypatch.setattr(flan2022, "SUBMIXES", tuple(cot if s.key == "cot" else s
                                                  for s in flan2022.SUBMIXES))
  with caplog.at_level("WARNING", logger="mtjax.collections.flan2022"):
    collection = flan2022.register(data_root=data_root)
  assert "cot" in collection.found
  assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
      "Flan 2022 submix cot: 6 rows with a task name and template type"]


def test_register_mixture_reweights_for_ablations(collection):
  mixture = flan2022.register_mixture(
      "flan2022_ablation", submix_weights={"flan2021": 1.0, "cot": 1.0},
      template_weights={"zs_opt": 1.0, "fs_opt": 3.0}, caps={"flan2021": 2},
      inversion_weights={"cot": 0})
  assert mixture.name == "flan2022_ablation"
  m = collection.mixtures
  assert m["flan2022_ablation"] == [("flan2022_ablation.flan2021_submix", 1.0),
                                    ("flan2022_ablation.cot_submix", 1.0)]
  assert m["flan2022_ablation.flan2021_zs_opt"] == [("flan2021_glue_mnli_2_0_0_zs_opt", 2.0),
                                                    ("flan2021_super_glue_rte_1_0_2_zs_opt", 1.0)]
  assert m["flan2022_ablation.cot_zs_opt"] == [("cot_cot_gsm8k_zs_opt", 2.0)]  # no inversion
  spec = mixing.from_seqio("flan2022_ablation")
  half = 0.5
  want = {"flan2021_glue_mnli_2_0_0_zs_opt": half / 4 * 2 / 3,
          "flan2021_super_glue_rte_1_0_2_zs_opt": half / 4 / 3,
          "flan2021_glue_mnli_2_0_0_fs_opt": half * 3 / 4 * 2 / 3,
          "flan2021_super_glue_rte_1_0_2_fs_opt": half * 3 / 4 / 3,
          "cot_cot_gsm8k_zs_opt": half / 4, "cot_cot_gsm8k_fs_opt": half * 3 / 4}
  assert dict(zip(spec.task_names, spec.weights)) == pytest.approx(want)
  with pytest.raises(errors.ConfigError, match="unknown submix"):
    flan2022.register_mixture("flan2022_bad", submix_weights={"flan2023": 1.0})


def test_cached_split_is_the_release_text_in_file_order(collection, tmp_path):
  name = "flan2021_glue_mnli_2_0_0_fs_opt"
  task = seqio.get_mixture_or_task(name)
  assert task.output_features["inputs"].add_eos and task.output_features["targets"].add_eos
  folder, _, files = collection.found["flan2021"]
  want = [(r["inputs"], r["targets"]) for path in files for r in pq.read_table(path).to_pylist()
          if r["task_name"] == "glue/mnli:2.0.0" and r["template_type"] == "fs_opt"]
  assert len(want) == 4 and len({os.path.basename(p) for p in files}) == 2
  manifest = cache.cache_task_split(task, "train", str(tmp_path))
  assert manifest["num_examples"] == 4
  cached = pipeline.read_examples(str(tmp_path), name, "train")
  assert [(ex["inputs_pretokenized"], ex["targets_pretokenized"]) for ex in cached] == want
  assert all("example_json" not in ex for ex in cached)  # the record is the example


def test_a_task_reads_only_the_row_groups_holding_its_rows(tmp_path, monkeypatch):
  rows = [{"inputs": f"in {i}", "targets": f"out {i}", "task_source": "x",
           "task_name": "b" if i in (3, 4, 15) else "a", "template_type": "zs_opt"}
          for i in range(20)]
  (path,) = _write_release(str(tmp_path), rows)  # ten row groups of two rows
  read = []
  original = pq.ParquetFile.read_row_group
  monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                      lambda self, i, **kw: read.append(i) or original(self, i, **kw))
  got = list(prerendered.select_rows(path, (("task_name", "b"), ("template_type", "zs_opt")),
                                     ("inputs", "targets")))
  assert got == [(4, {"inputs": "in 3", "targets": "out 3"}),
                 (5, {"inputs": "in 4", "targets": "out 4"}),
                 (16, {"inputs": "in 15", "targets": "out 15"})]
  assert read == [1, 2, 7]
  assert prerendered.key_counts([path], flan2022.KEY_COLUMNS) == {("a", "zs_opt"): 17,
                                                                  ("b", "zs_opt"): 3}


def test_missing_releases_register_nothing_and_say_how_to_get_them(data_root, tmp_path,
                                                                    monkeypatch, caplog):
  # cot only, from the Hugging Face cache's layout (a snapshot of symlinks to blobs)
  hub = tmp_path / "hub"
  monkeypatch.setenv("HF_HUB_CACHE", str(hub))
  monkeypatch.delenv("MTJAX_HF_DATA_DIR", raising=False)
  release = os.path.join(data_root, flan2022.BY_KEY["cot"].repo)
  files = {os.path.relpath(os.path.join(here, f), release): os.path.join(here, f)
           for here, _, names in os.walk(release) for f in names}
  L.hub_cache(str(hub), flan2022.BY_KEY["cot"].repo, files)
  flan2022.register(data_root=data_root)  # all five: flan2022 is registered
  assert "flan2022" in seqio.MixtureRegistry.names()
  with caplog.at_level("WARNING", logger="mtjax.collections.flan2022"):
    collection = flan2022.register(data_root=None)
  assert list(collection.found) == ["cot"] and collection.found["cot"][1].startswith("hub cache")
  assert "cot_submix" in seqio.MixtureRegistry.names()
  assert "flan2022" not in seqio.MixtureRegistry.names()  # no longer: four releases are gone
  assert "niv2_submix" not in seqio.MixtureRegistry.names()
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1
  assert "flan2021, t0, niv2, dialog not registered" in lines[0]
  assert "hf download --repo-type dataset DataProvenanceInitiative/flan2021_submix_original" \
      in lines[0]
  assert "niv2_submix_original" in flan2022.MISSING["niv2_submix"]
  with pytest.raises(errors.MissingError, match="submix flan2021"):
    flan2022.register_mixture("flan2022_x", submix_weights={"flan2021": 1.0})
  with pytest.raises(errors.MissingError, match="flan2022: Flan 2022 submix flan2021 .*hf download"):
    catalog.ensure_registered("flan2022")  # the collection says which release is missing
  cached = cache.cache_task_split(seqio.get_mixture_or_task("cot_cot_gsm8k_zs_opt"), "train",
                                  str(tmp_path / "cache"))
  assert cached["num_examples"] == 2
  # None here at all: an error (kept by the import as REGISTRATION_ERROR) with the command.
  os.rename(hub, tmp_path / "gone")
  with pytest.raises(errors.MissingError, match="not registered") as e:
    flan2022.register(data_root=str(tmp_path / "empty"))
  assert "hf download" in e.value.hint and flan2022.REGISTRATION_ERROR is e.value
  assert "cot_submix" not in seqio.MixtureRegistry.names()
