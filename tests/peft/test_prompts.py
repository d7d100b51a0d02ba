"""Soft prompts on both model families, against independent references: the plain model's
forward (prompt removed), one example alone with its own prompt (mixed-task batches), the full
recompute (KV-cache decoding), the model's own embedding (class-label init), and bit-identity of
frozen parameters after train steps (stage 1: prompt only; stage 2: model only)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import registry
from mtjax.peft import filters, prompts
from mtjax.train import optimizers
from mtjax.train import step as step_lib

P = 3  # prompt length


def _model(family: str, seed: int = 0, **overrides):
  name = "t5_test" if family == "t5" else "decoder_test"
  return registry.build(registry.config(name, **overrides), rngs=nnx.Rngs(seed))


def _with_prompt(model, num_prompts: int, placement: str = "prefix", seed: int = 1):
  d = model.cfg.d_model
  table = np.random.default_rng(seed).normal(0, 1, (num_prompts, P, d)).astype(np.float32)
  model.embed_hook = prompts.SoftPrompt(table, placement)
  return model


def _batch(family: str, rows: list[list[int]], targets: int = 4) -> dict:
  """Unpadded token rows -> a right-padded batch of the family's training features."""
  n = max(len(r) for r in rows)
  pad = lambda r, k: np.array(r + [0] * (k - len(r)), np.int32)
  if family == "t5":
    dec = np.array([[0, 7, 8, 9][:targets]] * len(rows), np.int32)
    return {"encoder_input_tokens": np.stack([pad(r, n) for r in rows]),
            "decoder_input_tokens": dec}
  return {"decoder_input_tokens": np.stack([pad([0] + r, n + 1) for r in rows])}


@nnx.jit
def forward(model, batch):
  return model(batch)


@pytest.mark.parametrize("family,placement", [("t5", "prefix"), ("decoder", "after_bos")])
def test_mixed_task_batch_gives_each_example_its_single_task_logits(family, placement):
  """Prompts 2, 0, 1 and none in one batch: each example's logits are those it gets in a
  single-task batch with its own task's prompt; without a prompt, those of the plain model."""
  m = _with_prompt(_model(family), num_prompts=3, placement=placement)
  graphdef, params = nnx.split(m)
  params = params.to_pure_dict()
  rows = [[5, 6, 7, 1], [9, 10, 1], [11, 12, 13, 14, 1], [5, 9, 1]]
  ids = np.array([2, 0, 1, -1], np.int32)
  batch = _batch(family, rows)
  got = np.asarray(forward(m, dict(batch, prompt_ids=ids)))
  single = {}  # reference: the whole batch as one task's batch, that task's prompt alone
  for row in (0, 1, 2):
    g, p = prompts.select(graphdef, params, row)
    single[row] = np.asarray(forward(nnx.merge(g, p), batch))
  for i, row in enumerate(ids[:3]):
    np.testing.assert_allclose(got[i], single[row][i], atol=2e-5, err_msg=f"example {i}")
  assert np.abs(single[0][0] - single[2][0]).max() > 1e-3  # prompts differ, and matter
  # Removed (detached, or row -1 in the mixed batch): the plain model's forward, bit for bit
  # when detached.
  plain = np.asarray(forward(_model(family), batch))
  g, p = prompts.detach(graphdef, params)
  assert prompts.HOOK not in p
  np.testing.assert_array_equal(np.asarray(forward(nnx.merge(g, p), batch)), plain)
  np.testing.assert_allclose(got[3], plain[3], atol=1e-5)
  assert np.abs(got[:3] - plain[:3]).max() > 1e-3  # a prompt is not a no-op


start_decode = nnx.jit(registry.start_decode, static_argnums=2)
decode_step = nnx.jit(registry.decode_step)


@pytest.mark.parametrize("family,placement", [("t5", "prefix"), ("decoder", "prefix"),
                                              ("decoder", "after_bos")])
def test_kv_cache_decoding_with_prompts_equals_full_recompute(family, placement):
  """Cached logits at every step equal the full forward of the sequence so far, per example
  (prompts 1, 0 and none in one batch; prompts of different lengths)."""
  m = _with_prompt(_model(family, seed=3), num_prompts=2, placement=placement)
  ids = np.array([1, 0, -1], np.int32)
  rows = [[5, 6, 7, 8, 1], [9, 10, 1], [11, 12, 1]]
  steps = 4
  if family == "t5":
    batch = {"encoder_input_tokens": _batch("t5", rows)["encoder_input_tokens"], "prompt_ids": ids}
  else:
    batch = _batch("decoder", rows)
    batch.update(decoder_prompt_lengths=np.array([len(r) + 1 for r in rows], np.int32),
                 prompt_ids=ids)
  logits, cache = start_decode(m, batch, steps)
  cached, chosen = [np.asarray(logits)], []
  for _ in range(steps - 1):
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    chosen.append(np.asarray(token))
    logits, cache = decode_step(m, cache, token)
    cached.append(np.asarray(logits))
  chosen = np.stack(chosen, 1)
  width = 6 + steps  # one padded shape for every reference forward (one compilation)
  for i in range(steps):  # reference: the full forward of each sequence so far, right-padded
    if family == "t5":
      seqs = [[0, *chosen[b, :i]] for b in range(3)]
      full = {"encoder_input_tokens": batch["encoder_input_tokens"]}
    else:
      seqs = [[0, *row, *chosen[b, :i]] for b, row in enumerate(rows)]
      full = {}
    full["decoder_input_tokens"] = np.stack([np.pad(q, (0, width - len(q))) for q in seqs])
    full["prompt_ids"] = ids
    out = np.asarray(forward(m, full))
    want = np.stack([out[b, len(q) - 1] for b, q in enumerate(seqs)])
    np.testing.assert_allclose(cached[i], want, atol=2e-5, err_msg=f"step {i}")


def test_class_label_init_is_the_mean_of_each_labels_subword_embeddings():
  """Reference: the model's own embedded inputs (Gemma-style sqrt(d) scaling included)."""
  import seqio

  from mtjax.config import schema

  vocab = seqio.ByteVocabulary()
  m = _model("decoder", scale_embeddings=True)
  cfg = schema.ModelConfig(preset="decoder_test", prompt_length=5, prompt_init="class_labels",
                           prompt_labels=("yes", "no"), prompt_init_vocab=50)
  hook = prompts.create(m, cfg, num_prompts=2, seed=0, vocab=vocab)
  table = np.asarray(hook.prompt[...])
  assert table.shape == (2, 5, 32)
  for i, word in enumerate(("yes", "no")):
    ids = np.array([vocab.encode(word)], np.int32)
    assert ids.shape[1] == len(word)  # bytes: one sub-word per letter
    embedded = np.asarray(m.embed(ids, None, None, hook=False)[0])[0]
    np.testing.assert_allclose(table[:, i], np.broadcast_to(embedded.mean(0), (2, 32)),
                               rtol=1e-6, atol=1e-6)
  # the rest: embedded tokens among the first 50 ids
  first = np.asarray(m.embed(np.arange(50)[None], None, None, hook=False)[0])[0]
  for v in table[:, 2:].reshape(-1, 32):
    assert np.abs(first - v).max(-1).min() < 1e-5
  uniform = prompts.initial_table(None, num_prompts=1, length=4, d_model=8, vocab_size=10,
                                  init="uniform", seed=0, init_range=0.5)
  assert uniform.shape == (1, 4, 8) and np.abs(uniform).max() <= 0.5


def _flat(tree):
  return {filters.path_str(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          for k in [tuple(getattr(p, "key", p) for p in k)]}


def _steps(graphdef, params, trainable, batch, n=2, lr=0.3):
  tx = optimizers.make("adafactor", lr, 1e-5, decay_rate=0.8, parameter_scale=False)
  paths = filters.trainable_paths(params, trainable)
  opt_state = tx.init(filters.partition(params, paths)[0])
  step = step_lib.make_train_step(graphdef, tx, num_tasks=2, trainable=paths, donate=False)
  for i in range(n):
    params, opt_state, _ = step(params, opt_state, batch, i)
  return params, opt_state


def test_stage1_trains_only_the_prompt_and_stage2_only_the_model():
  """ProMoT's two stages through the unchanged train step, two tasks with their own prompts."""
  m = _with_prompt(_model("decoder"), num_prompts=2)
  graphdef, params = nnx.split(m)
  params = params.to_pure_dict()
  targets = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 9, 1, 0, 0], [11, 7, 1, 0, 0, 0],
                      [12, 13, 8, 8, 1, 0]], np.int32)  # inputs of 2 tokens, then the targets
  batch = {"decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           "decoder_loss_weights": ((targets > 0) & (np.arange(6) >= 2)).astype(np.float32),
           "task_ids": np.repeat(np.array([[0], [1], [0], [1]], np.int32), 6, 1)}
  batch = prompts.add_prompt_ids(batch, prompts.task_rows(("a", "b"), ("a", "b")))
  np.testing.assert_array_equal(batch["prompt_ids"], [0, 1, 0, 1])
  before = _flat(params)
  key = "embed_hook/prompt"

  stage1, opt_state = _steps(graphdef, params, "prompt", batch)
  after = _flat(stage1)
  assert not np.array_equal(after[key], before[key])
  for name, value in before.items():
    if name != key:
      np.testing.assert_array_equal(after[name], value, err_msg=name)
  # The optimizer state of stage 1 holds the prompt's moments only.
  state_paths = {tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))
                 for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]}
  assert state_paths - {()} == {("embed_hook", "prompt")}

  stage2, _ = _steps(graphdef, stage1, "all_but_prompt", batch, lr=1e-3)
  final = _flat(stage2)
  np.testing.assert_array_equal(final[key], after[key])
  changed = [n for n in final if n != key and not np.array_equal(final[n], after[n])]
  assert len(changed) == len(final) - 1, sorted(set(final) - set(changed))


def test_init_from_initialises_a_vocab_prompt_from_the_restored_embeddings(tmp_path,
                                                                           synthetic_cache):
  """A prompt the pretrained checkpoint lacks starts from the *pretrained* embeddings (vocab
  init), not the random ones; a prompt directory then replaces it (train.init_prompt_from)."""
  import orbax.checkpoint as ocp

  from mtjax.config import schema
  from mtjax.train import setup as setup_lib
  from mtjax.train import pretrained as pretrained_lib

  base = _model("t5", seed=9)  # "pretrained": another seed than the run's fresh init
  step_dir = tmp_path / "pretrained" / "checkpoints" / "1"
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(str(step_dir / "params"), nnx.state(base).to_pure_dict())
  ckpt.wait_until_finished()
  cfg = schema.RunConfig(
      run_dir=str(tmp_path / "run"),
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=synthetic_cache,
                             inputs_length=16, targets_length=4, batch_size=8, pack=False),
      model=schema.ModelConfig(preset="t5_test", prompt_length=P, prompt_init="vocab",
                               prompt_init_vocab=40),
      mesh=schema.MeshConfig(data=8))
  setup = setup_lib.build(cfg)
  params = pretrained_lib.init_from(setup, setup.params, str(tmp_path / "pretrained"))
  table = np.asarray(prompts.table(params)).reshape(-1, 32)
  pretrained = np.asarray(base.token_embed.embedding[...])[:40]
  fresh = np.asarray(setup.params["token_embed"]["embedding"])[:40]
  for v in table:
    assert np.abs(pretrained - v).max(-1).min() == 0  # one of the first 40 pretrained rows
    assert np.abs(fresh - v).max(-1).min() > 1e-3
  np.testing.assert_array_equal(params["token_embed"]["embedding"],
                                base.token_embed.embedding[...])
  saved = prompts.save(str(tmp_path / "prompt"), np.full((1, P, 32), 0.25), {"note": "x"})
  merged = pretrained_lib.merge_prompt(params, saved)
  np.testing.assert_array_equal(prompts.table(merged), 0.25)
  with pytest.raises(ValueError, match="model.prompt_length"):
    prompts.with_table(params, np.zeros((1, P + 1, 32)))
  with pytest.raises(ValueError, match="data.pack=False"):
    setup_lib.build(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pack=True)))


def test_training_batches_get_each_tasks_prompt_row(synthetic_cache):
  """Per-task prompts in the loop: `prompt_ids` follow `model.prompt_tasks` by task name; a
  mixture task without a prompt gets -1."""
  from mtjax.config import schema
  from mtjax.train import setup as setup_lib

  cfg = schema.RunConfig(
      data=schema.DataConfig(mixture="synthetic_strings", cache_dir=synthetic_cache,
                             inputs_length=16, targets_length=8, batch_size=16, pack=False),
      model=schema.ModelConfig(preset="t5_test", prompt_length=P,
                               prompt_tasks=("synthetic_sort", "synthetic_copy")),
      mesh=schema.MeshConfig(data=8))
  setup = setup_lib.build(cfg)
  assert prompts.table(setup.params).shape == (2, P, 32)
  batch = setup_lib.local_batch(setup, next(setup_lib.data_iterator(setup)))
  names = [setup.spec.task_names[t] for t in batch["task_ids"][:, 0]]
  want = [{"synthetic_sort": 0, "synthetic_copy": 1}.get(n, -1) for n in names]
  assert len(set(names)) == 3  # a mixed batch
  np.testing.assert_array_equal(batch["prompt_ids"], want)
