"""HF tokenizers as SeqIO vocabularies: ids, decoding and special ids equal transformers' on
tokenizer dirs laid out like Llama 3, Qwen2, Gemma and T5 (built in the test), in SeqIO tasks and
the cache, from local dirs and URLs."""

import copy
import json
import os
import pickle

import numpy as np
import pytest

from mtjax import errors
from mtjax.data import hf_vocab
from tests.data import tokenizer_files

# Real text with what tokenizers get wrong most easily: quotes, apostrophes, unicode (accents,
# CJK, dashes), tabs and newlines, runs of spaces, digits, and special tokens written in text.
TEXTS = tokenizer_files.SENTENCES + [
    "Ünïcödé façade — 東京タワー ✓ «quoted» “curly” ‘single’",
    "  leading and trailing spaces  ",
    "line one\n\nline two\r\nline three\ttab",
    "Numbers: 3.14159, 1,000,000 and 2024-06-01.",
    "",
]
FAMILIES = ("llama3", "llama3_instruct", "qwen2", "gemma", "t5")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  build = {
      "llama3": tokenizer_files.llama3,
      "llama3_instruct": lambda p: tokenizer_files.llama3(p, instruct=True),
      "qwen2": tokenizer_files.qwen2,
      "qwen2_base": lambda p: tokenizer_files.qwen2(p, instruct=False),
      "gemma": tokenizer_files.gemma,
      "t5": tokenizer_files.t5,
      "t5_bare": lambda p: tokenizer_files.t5(p, bare=True),
  }
  return {name: fn(str(root / name)) for name, fn in build.items()}


@pytest.fixture(scope="module")
def refs(dirs):
  return {name: tokenizer_files.reference(path) for name, path in dirs.items()}


@pytest.mark.parametrize("family", FAMILIES + ("qwen2_base",))
def test_ids_equal_transformers_without_special_tokens(dirs, refs, family):
  vocab = hf_vocab.HFVocabulary.from_dir(dirs[family])
  ref = refs[family]
  for text in TEXTS:
    assert vocab.encode(text) == ref.encode(text, add_special_tokens=False), text
  # The post-processor's BOS (Llama 3) / </s> (T5) is not added: SeqIO adds EOS itself.
  if family.startswith(("llama3", "t5")):
    assert ref.encode("The cat sat.") != ref.encode("The cat sat.", add_special_tokens=False)
  # Special tokens written in the text are matched, as transformers matches them.
  marker = {"llama3": "<|eot_id|>", "llama3_instruct": "<|eot_id|>", "qwen2": "<|im_end|>",
            "qwen2_base": "<|im_start|>", "gemma": "<end_of_turn>", "t5": "</s>"}[family]
  text = f"Answer: yes{marker}\nNext"
  ids = vocab.encode(text)
  assert ids == ref.encode(text, add_special_tokens=False)
  assert vocab.token_to_id(marker) in ids
  assert vocab.vocab_size == len(ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_is_transformers_decode_up_to_the_first_end_id(dirs, refs, family):
  vocab = hf_vocab.HFVocabulary.from_dir(dirs[family])
  ref = refs[family]
  for text in TEXTS:
    ids = vocab.encode(text)
    assert vocab.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    # SeqIO: everything after EOS is dropped (a decoded model output padded or run on).
    tail = vocab.encode("The president resigned.")
    assert vocab.decode(ids + [vocab.eos_id] + tail) == vocab.decode(ids)
    assert vocab.decode(np.asarray(ids + [vocab.eos_id], np.int32)) == vocab.decode(ids)
  if family in ("llama3", "llama3_instruct", "qwen2"):  # byte-level BPE: lossless
    for text in TEXTS:
      assert vocab.decode(vocab.encode(text)) == text
  # Special tokens (BOS, pad, chat markers) are skipped; ids past the vocabulary are dropped
  # (or read as unk where the tokenizer has one, as SeqIO's vocabularies do).
  ids = vocab.encode("The cat sat on the mat.")
  specials = [i for i in (vocab.bos_id, vocab.special_ids["pad"])
              if i is not None and i not in vocab.stop_ids]  # (Qwen2's pad also ends a turn)
  assert vocab.decode(specials + ids) == vocab.decode(ids)
  assert vocab.decode(ids + [vocab.vocab_size + 5]) == ref.decode(
      ids + ([vocab.unk_id] if vocab.unk_id is not None else []), skip_special_tokens=True)


def test_special_ids_per_family(dirs, refs):
  """The ids transformers resolves (bos / eos / unk / pad), plus SeqIO's pad_id 0."""
  def ids(name):
    v = hf_vocab.HFVocabulary.from_dir(dirs[name])
    return v, (v.bos_id, v.eos_id, v.unk_id, v.special_ids["pad"])

  for name in FAMILIES + ("qwen2_base",):
    vocab, got = ids(name)
    ref = refs[name]
    assert got == (ref.bos_token_id, ref.eos_token_id, ref.unk_token_id, ref.pad_token_id), name
    assert vocab.pad_id == 0  # what SeqIO's and mtjax's converters pad with
  llama, (bos, eos, unk, pad) = ids("llama3")
  assert llama.id_to_token(bos) == "<|begin_of_text|>" and llama.id_to_token(0) == "!"
  assert llama.id_to_token(eos) == "<|end_of_text|>" and (unk, pad) == (None, None)
  assert llama.stop_ids == (eos,)
  instruct, (_, eos, _, _) = ids("llama3_instruct")
  assert instruct.id_to_token(eos) == "<|eot_id|>"
  assert instruct.stop_ids == (eos, instruct.token_to_id("<|end_of_text|>"))  # generation_config
  qwen, (bos, eos, unk, pad) = ids("qwen2")  # config.json names a bos_token_id; the tokenizer none
  assert bos is None and unk is None and qwen.id_to_token(eos) == "<|im_end|>"
  assert qwen.id_to_token(pad) == "<|endoftext|>"
  base, (_, eos, _, _) = ids("qwen2_base")
  assert base.id_to_token(eos) == "<|endoftext|>"
  assert ids("gemma")[1] == (2, 1, 3, 0)
  assert ids("t5")[1] == (None, 1, 2, 0)
  # A bare converted T5 tokenizer.json: the ids come from config.json, unk from the model.
  bare, got = ids("t5_bare")
  assert got == (None, 1, 2, 0)
  assert bare.encode(TEXTS[3]) == bare.tokenizer.encode(TEXTS[3], add_special_tokens=False).ids


def test_with_bos_and_with_eos(dirs):
  vocab = hf_vocab.HFVocabulary.from_dir(dirs["llama3"])
  text = "The cat sat on the mat."
  bos = vocab.with_bos()
  assert bos.encode(text) == [vocab.bos_id] + vocab.encode(text)
  assert bos.decode(bos.encode(text)) == text and bos.add_bos and not vocab.add_bos
  assert bos != vocab and bos.fingerprint != vocab.fingerprint
  eot = vocab.with_eos("<|eot_id|>")
  assert eot.eos_id == vocab.token_to_id("<|eot_id|>")
  assert eot.stop_ids == (eot.eos_id, vocab.eos_id)  # the tokenizer's EOS still ends decoding
  assert eot.fingerprint != vocab.fingerprint
  with pytest.raises(errors.DataError, match="no BOS"):
    hf_vocab.HFVocabulary.from_dir(dirs["qwen2"]).with_bos()
  with pytest.raises(errors.DataError, match="'<nope>' is not in tokenizer.json"):
    vocab.with_eos("<nope>")


def test_copies_pickles_and_identity(dirs):
  vocab = hf_vocab.HFVocabulary.from_dir(dirs["gemma"])
  for other in (pickle.loads(pickle.dumps(vocab)), copy.deepcopy(vocab), copy.copy(vocab),
                hf_vocab.HFVocabulary.from_dir(dirs["gemma"])):
    assert other == vocab and hash(other) == hash(vocab)
    assert other.fingerprint == vocab.fingerprint
    assert other.encode(TEXTS[7]) == vocab.encode(TEXTS[7])
  import cloudpickle  # what the cache's worker processes use

  assert cloudpickle.loads(cloudpickle.dumps(vocab)).encode(TEXTS[2]) == vocab.encode(TEXTS[2])
  assert hf_vocab.HFVocabulary.from_dir(dirs["t5"]) != vocab
  assert "gemma" in repr(vocab) and vocab.fingerprint[:12] in repr(vocab)


def test_fingerprint_follows_the_tokenizer_not_the_path(dirs, tmp_path):
  import shutil

  copied = shutil.copytree(dirs["qwen2"], str(tmp_path / "moved"))
  vocab = hf_vocab.HFVocabulary.from_dir(dirs["qwen2"])
  assert hf_vocab.HFVocabulary.from_dir(copied).fingerprint == vocab.fingerprint
  with open(os.path.join(copied, "tokenizer_config.json")) as f:
    config = json.load(f)
  config["eos_token"] = "<|endoftext|>"  # a different EOS: different cached tokens
  with open(os.path.join(copied, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  assert hf_vocab.HFVocabulary.from_dir(copied).fingerprint != vocab.fingerprint
  # A retrained tokenizer.json with the same special tokens.
  other = tokenizer_files.qwen2(str(tmp_path / "retrained"))
  with open(os.path.join(other, "tokenizer.json")) as f:
    data = json.load(f)
  data["model"]["merges"] = data["model"]["merges"][:-1]
  with open(os.path.join(other, "tokenizer.json"), "w") as f:
    json.dump(data, f)
  assert hf_vocab.HFVocabulary.from_dir(other).fingerprint != vocab.fingerprint


def test_url_dirs_and_file_paths(dirs):
  """A tokenizer dir may be a URL (read through mtjax.fs: gs:// in practice, memory:// here)."""
  import fsspec

  memory = fsspec.filesystem("memory")
  for name in os.listdir(dirs["llama3_instruct"]):
    memory.pipe(f"/tok/llama/{name}", open(os.path.join(dirs["llama3_instruct"], name),
                                           "rb").read())
  remote = hf_vocab.HFVocabulary.from_dir("memory://tok/llama")
  local = hf_vocab.HFVocabulary.from_dir(dirs["llama3_instruct"])
  assert remote == local and remote.encode(TEXTS[4]) == local.encode(TEXTS[4])
  assert hf_vocab.has_tokenizer("memory://tok/llama")
  assert not hf_vocab.has_tokenizer("memory://tok/nothing") and not hf_vocab.has_tokenizer("")
  assert hf_vocab.has_tokenizer(dirs["gemma"])
  by_file = hf_vocab.HFVocabulary.from_dir(os.path.join(dirs["gemma"], "tokenizer.json"))
  assert by_file == hf_vocab.HFVocabulary.from_dir(dirs["gemma"])


def test_errors_name_the_dir_and_file(dirs, tmp_path):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(errors.MissingError, match=f"{empty}.* has no tokenizer.json"):
    hf_vocab.HFVocabulary.from_dir(empty)
  broken = str(tmp_path / "broken")
  os.makedirs(broken)
  with open(os.path.join(broken, "tokenizer.json"), "w") as f:
    f.write("{\"model\": ")
  with pytest.raises(errors.DataError, match=f"{broken}: tokenizer.json cannot be loaded"):
    hf_vocab.HFVocabulary.from_dir(broken)
  import shutil

  no_eos = shutil.copytree(dirs["t5"], str(tmp_path / "no_eos"))
  os.remove(os.path.join(no_eos, "config.json"))
  with open(os.path.join(no_eos, "tokenizer_config.json"), "w") as f:
    json.dump({"pad_token": "<pad>"}, f)
  with pytest.raises(errors.DataError, match=f"{no_eos}: no EOS token"):
    hf_vocab.HFVocabulary.from_dir(no_eos)
  with open(os.path.join(no_eos, "tokenizer_config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(errors.DataError, match="tokenizer_config.json is not valid JSON"):
    hf_vocab.HFVocabulary.from_dir(no_eos)


def test_tf_ops_match_python(dirs):
  import seqio
  import tensorflow as tf

  vocab = hf_vocab.HFVocabulary.from_dir(dirs["llama3_instruct"])
  assert isinstance(vocab, seqio.Vocabulary)
  for text in TEXTS:
    ids = vocab.encode_tf(tf.constant(text))
    assert ids.dtype == tf.int32 and ids.numpy().tolist() == vocab.encode(text)
    assert vocab.decode_tf(ids).numpy().decode() == vocab.decode(vocab.encode(text))
  batch = vocab.encode_tf(tf.constant(TEXTS[:3]))
  assert batch.to_list() == [vocab.encode(t) for t in TEXTS[:3]]
  no = vocab.encode("No way, not at all")
  yes = vocab.encode("Yes.") + [vocab.eos_id]
  padded = tf.constant([yes + no[:len(no) - len(yes)], no])  # (id 0 is "!" here: no 0-padding)
  assert [t.decode() for t in vocab.decode_tf(padded).numpy()] == ["Yes.", "No way, not at all"]
  # SeqIO's own tokenize preprocessor (tf.data, as at cache time).
  ds = tf.data.Dataset.from_tensor_slices({"targets": TEXTS[:4]})
  features = {"targets": seqio.Feature(vocabulary=vocab)}
  out = list(seqio.preprocessors.tokenize(ds, features).as_numpy_iterator())
  assert [list(ex["targets"]) for ex in out] == [vocab.encode(t) for t in TEXTS[:4]]


def test_seqio_file_task_cached_with_the_tokenizer(dirs, refs, tmp_path):
  """A file task registered under the run's tokenizer (no vocabulary argument) caches exactly
  the HF tokenizer's ids plus EOS; another tokenizer changes the fingerprint and rebuilds."""
  from mtjax.data import cache, file_tasks, pipeline, vocabularies
  from mtjax.data.templates import Template

  data = tmp_path / "train.jsonl"
  with open(data, "w", encoding="utf-8") as f:
    for i, text in enumerate(TEXTS[:8]):
      f.write(json.dumps({"text": text, "label": ["no", "yes"][i % 2]}) + "\n")
  templates = [Template("ask", "Is this true? {text}", "{label}")]
  cache_dir = str(tmp_path / "cache")

  def build(tokenizer_dir):
    vocab = hf_vocab.HFVocabulary.from_dir(tokenizer_dir)
    with vocabularies.defaulting_to(vocab):
      task = file_tasks.register_file_task("hf_vocab_task", {"train": str(data)}, templates)
    assert task.output_features["targets"].vocabulary is vocab
    manifest = cache.cache_task_split(task, "train", cache_dir)
    return vocab, manifest

  vocab, first = build(dirs["llama3_instruct"])
  ref = refs["llama3_instruct"]
  examples = pipeline.read_examples(cache_dir, "hf_vocab_task", "train")
  assert len(examples) == 8
  for ex, text in zip(examples, TEXTS[:8]):
    assert list(ex["inputs"]) == ref.encode(f"Is this true? {text}", add_special_tokens=False)
    assert ex["inputs_pretokenized"] == f"Is this true? {text}"
  assert first["output_features"]["targets"] == {
      "add_eos": True, "eos_id": ref.eos_token_id, "pad_id": 0, "vocab_size": len(ref),
      "start_id": ref.bos_token_id}  # decoder rows start from BOS (test_start_token.py)
  # The post-cache EOS, as training reads it.
  prepared = pipeline.post_cache(examples[1], first["post_cache_ops"], first["output_features"],
                                 {"inputs": 64, "targets": 8})
  assert list(prepared["targets"]) == ref.encode("yes", add_special_tokens=False) + [
      ref.eos_token_id]
  _, same = build(dirs["llama3_instruct"])
  assert same["fingerprint"] == first["fingerprint"]
  _, other = build(dirs["qwen2"])
  assert other["fingerprint"] != first["fingerprint"]
  qwen = refs["qwen2"]
  ex = pipeline.read_examples(cache_dir, "hf_vocab_task", "train", limit=1)[0]
  assert list(ex["inputs"]) == qwen.encode(f"Is this true? {TEXTS[0]}", add_special_tokens=False)
  assert other["output_features"]["targets"]["eos_id"] == qwen.eos_token_id


def test_the_runs_default_vocabulary(dirs):
  """`data.tokenizer`, else `model.hf_checkpoint` when it holds a tokenizer.json, else none."""
  from mtjax.config import schema
  from mtjax.data import vocabularies

  def run(tokenizer="", checkpoint=""):
    return schema.RunConfig(data=schema.DataConfig(tokenizer=tokenizer),
                            model=schema.ModelConfig(hf_checkpoint=checkpoint))

  assert vocabularies.for_run(run()) is None
  assert vocabularies.for_run(run(checkpoint=dirs["gemma"])) == hf_vocab.HFVocabulary.from_dir(
      dirs["gemma"])
  assert vocabularies.for_run(run(dirs["t5"], dirs["gemma"])) == hf_vocab.HFVocabulary.from_dir(
      dirs["t5"])
  assert vocabularies.tokenizer_dir(run(checkpoint=os.path.dirname(dirs["gemma"]))) == ""
