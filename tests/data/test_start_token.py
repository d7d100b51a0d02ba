"""Decoder rows start from the tokenizer's start token, not id 0.

A decoder pretrained with a BOS first (Llama 3 `<|begin_of_text|>`, Gemma `<bos>`) must read that
BOS at position 0 of every row and of every packed segment; with an HF tokenizer id 0 is text
(Llama 3's and Qwen2's "!"). The start token is recorded in the cache manifest, so the TF-free
pipeline, the eval batches, scoring and generation prompts all start from it. SeqIO's
vocabularies keep 0 (tests/eval/test_seqio_parity.py, tests/data/test_decoder_converters.py).
"""

import json

import numpy as np
import pytest

from mtjax import errors
from mtjax.data import cache, eval_data, feature_converters, hf_vocab, mixing, pipeline
from mtjax.eval import generate, scoring
from tests.data import tokenizer_files

LENGTHS = {"inputs": 24, "targets": 8}
PACK_LENGTHS = {"inputs": 48, "targets": 48}  # rows of 96 tokens: several examples each
LLAMA_TASK = "start_token_llama"
QWEN_TASK = "start_token_qwen"
RECORDS = [{"text": t, "label": ["no", "yes"][i % 2]}
           for i, t in enumerate(tokenizer_files.SENTENCES * 3)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  return {"llama3": tokenizer_files.llama3(str(root / "llama3")),
          "qwen2": tokenizer_files.qwen2(str(root / "qwen2")),
          "qwen2_base": tokenizer_files.qwen2(str(root / "qwen2_base"), instruct=False),
          "gemma": tokenizer_files.gemma(str(root / "gemma")),
          "t5": tokenizer_files.t5(str(root / "t5"))}


def _register(name, vocab, data_file):
  from mtjax.data import file_tasks, vocabularies  # pylint: disable=g-import-not-at-top
  from mtjax.data.templates import Template  # pylint: disable=g-import-not-at-top

  with vocabularies.defaulting_to(vocab):
    return file_tasks.register_file_task(
        name, {"train": str(data_file), "validation": str(data_file)},
        [Template("ask", "Is this true? {text}", "{label}")])


@pytest.fixture(scope="module")
def cached(dirs, tmp_path_factory):
  """A Llama-3-like and a Qwen2-like task, both splits cached; (cache dir, {task: vocab})."""
  root = tmp_path_factory.mktemp("start_token")
  data = root / "records.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
  cache_dir = str(root / "cache")
  vocabs = {LLAMA_TASK: hf_vocab.HFVocabulary.from_dir(dirs["llama3"]),
            QWEN_TASK: hf_vocab.HFVocabulary.from_dir(dirs["qwen2"])}
  for name, vocab in vocabs.items():
    task = _register(name, vocab, data)
    for split in ("train", "validation"):
      cache.cache_task_split(task, split, cache_dir)
  return cache_dir, vocabs


def _spec(*tasks):
  return mixing.MixtureSpec("start_token_mix", tuple(mixing.TaskRate(t, 1.0) for t in tasks))


def test_start_id_per_tokenizer_family(dirs):
  """BOS when the tokenizer has one; Qwen2 (no BOS) starts from `<|endoftext|>`, what its
  configs name as bos_token_id and its pretraining separates documents with; T5 from pad 0."""
  get = lambda name: hf_vocab.HFVocabulary.from_dir(dirs[name])
  llama = get("llama3")
  assert llama.start_id == llama.bos_id == llama.token_to_id("<|begin_of_text|>") != 0
  assert get("gemma").start_id == 2
  for name in ("qwen2", "qwen2_base"):
    qwen = get(name)
    assert qwen.bos_id is None and qwen.start_id == qwen.token_to_id("<|endoftext|>") != 0
  assert get("t5").start_id == 0
  assert llama.with_eos("<|eot_id|>").start_id == llama.start_id


def test_manifest_records_the_start_id(cached, synthetic_cache):
  cache_dir, vocabs = cached
  manifest = cache.read_manifest(cache_dir, LLAMA_TASK, "train")
  bos = vocabs[LLAMA_TASK].bos_id
  assert {f["start_id"] for f in manifest["output_features"].values()} == {bos}
  assert pipeline.task_start_id(cache_dir, LLAMA_TASK, "train") == bos
  # SeqIO vocabularies (ByteVocabulary) start from 0, as SeqIO's converters do.
  assert pipeline.task_start_id(synthetic_cache, "synthetic_add", "train") == 0
  # A manifest written before the start id was recorded reads as 0.
  old = dict(manifest, output_features={
      k: {kk: vv for kk, vv in v.items() if kk != "start_id"}
      for k, v in manifest["output_features"].items()})
  features = old["output_features"]["targets"]
  assert int(features.get("start_id", feature_converters.BOS_ID)) == 0


def _segment_starts(seg):
  prev = np.concatenate([np.zeros_like(seg[..., :1]), seg[..., :-1]], axis=-1)
  return (seg > 0) & (seg != prev)


@pytest.mark.parametrize("kind", ["decoder_only", "prefix_lm"])
def test_unpacked_rows_start_with_bos(cached, kind):
  cache_dir, vocabs = cached
  bos = vocabs[LLAMA_TASK].bos_id
  opts = pipeline.PipelineOptions(LENGTHS, batch_size=4, pack=False, feature_converter=kind,
                                  prefetch=0)
  it = iter(pipeline.train_batches(_spec(LLAMA_TASK), cache_dir, opts))
  for _ in range(3):
    batch = next(it)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], bos)
    # the rest is the targets shifted right
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                  batch["decoder_target_tokens"][:, :-1])
  # Eval batches: the same rows.
  rows = next(eval_data.task_batches(cache_dir, LLAMA_TASK, "validation", LENGTHS, 4,
                                     feature_converter=kind)).features
  np.testing.assert_array_equal(rows["decoder_input_tokens"][:, 0], bos)


@pytest.mark.parametrize("kind", ["decoder_only", "prefix_lm"])
@pytest.mark.parametrize("packer", ["window", "first_fit"])
def test_every_packed_segment_starts_with_bos(cached, kind, packer):
  cache_dir, vocabs = cached
  bos = vocabs[LLAMA_TASK].bos_id
  opts = pipeline.PipelineOptions(PACK_LENGTHS, batch_size=4, pack=True, packer=packer,
                                  feature_converter=kind, prefetch=0)
  batch = next(iter(pipeline.train_batches(_spec(LLAMA_TASK), cache_dir, opts)))
  seg, tokens = batch["decoder_segment_ids"], batch["decoder_input_tokens"]
  starts = _segment_starts(seg)
  assert starts.sum() > len(seg)  # several examples per row
  np.testing.assert_array_equal(tokens[starts], bos)
  inside = (seg > 0) & ~starts
  shifted = np.concatenate([np.zeros_like(tokens[:, :1]), batch["decoder_target_tokens"][:, :-1]],
                           axis=1)
  np.testing.assert_array_equal(tokens[inside], shifted[inside])


def test_enc_dec_rows_keep_start_zero(cached):
  """T5's decoder starts from 0 whatever the vocabulary (its decoder_start_token_id)."""
  cache_dir, _ = cached
  for pack in (False, True):
    opts = pipeline.PipelineOptions(LENGTHS, batch_size=4, pack=pack, prefetch=0)
    batch = next(iter(pipeline.train_batches(_spec(LLAMA_TASK), cache_dir, opts)))
    seg = batch.get("decoder_segment_ids")
    starts = _segment_starts(seg) if seg is not None else np.eye(1, LENGTHS["targets"], 0,
                                                                 dtype=bool).repeat(4, 0)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][starts], 0)


@pytest.mark.parametrize("family", ["decoder_only", "prefix_lm"])
def test_prompts_and_scored_rows_start_as_training_rows(cached, family):
  """The generation prompt is the inputs part of the training row (BOS first), and scoring's
  features are the training row itself."""
  cache_dir, vocabs = cached
  bos = vocabs[LLAMA_TASK].bos_id
  start = pipeline.task_start_id(cache_dir, LLAMA_TASK, "validation")
  batch = next(eval_data.task_batches(cache_dir, LLAMA_TASK, "validation", LENGTHS, 4,
                                      feature_converter=family))
  prepare = pipeline.preparer(cache_dir, LLAMA_TASK, 0, "validation", LENGTHS, False)
  prepared = [prepare(ex) for ex in batch.examples]
  inputs = [np.asarray(p["inputs"], np.int32) for p in prepared]
  tokens = np.stack([feature_converters.pad_to(x, LENGTHS["inputs"]) for x in inputs])
  prompts = generate.prompt_batch(family, tokens, [len(x) for x in inputs], start_id=start)
  np.testing.assert_array_equal(prompts["decoder_input_tokens"][:, 0], bos)
  for r, x in enumerate(inputs):
    n = len(x) + 1
    assert prompts["decoder_prompt_lengths"][r] == n
    np.testing.assert_array_equal(prompts["decoder_input_tokens"][r, :n],
                                  batch.features["decoder_input_tokens"][r, :n])
  pairs = [(x, p["targets"]) for x, p in zip(inputs, prepared)]
  features = scoring.pair_features(pairs, LENGTHS, family, start_id=start)
  for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
    np.testing.assert_array_equal(features[k], batch.features[k], err_msg=k)


def test_a_mixture_of_tokenizers_with_different_starts_is_refused(cached):
  cache_dir, vocabs = cached
  with pytest.raises(errors.ConfigError) as e:
    pipeline.start_id(cache_dir, [LLAMA_TASK, QWEN_TASK], "train")
  message = str(e.value)
  for task, vocab in vocabs.items():
    assert f"{task}: {vocab.start_id}" in message
  opts = pipeline.PipelineOptions(LENGTHS, batch_size=4, feature_converter="prefix_lm",
                                  prefetch=0)
  with pytest.raises(errors.ConfigError):
    next(iter(pipeline.train_batches(_spec(LLAMA_TASK, QWEN_TASK), cache_dir, opts)))
  # enc_dec rows start from 0 whatever the tokenizers: no conflict to refuse.
  opts = pipeline.PipelineOptions(LENGTHS, batch_size=4, prefetch=0)
  next(iter(pipeline.train_batches(_spec(LLAMA_TASK, QWEN_TASK), cache_dir, opts)))
