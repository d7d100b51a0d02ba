"""Soft prompts (prompt tuning, ProMoT): a table of learned vectors inserted after the embedding.

`SoftPrompt` is the models' `embed_hook` (see `mtjax.models.t5` / `mtjax.models.decoder`). Its
table `[num_prompts, P, d]` is a `PromptParam` (its own variable type, replicated: the logical
axes map to no mesh axis), stored at parameter path `embed_hook/prompt`, so
`train.trainable=prompt` / `all_but_prompt` select it. Each example gets row `prompt_ids[b]` of
the table (`-1`: no prompt); one shared prompt (`num_prompts == 1`) needs no ids. The trainer
derives `prompt_ids` from the batch's `task_ids` (`add_prompt_ids`), so a mixed-task batch gives
every example its own task's prompt (multi-task ProMoT).

Placement: `prefix` (before the first token) or `after_bos` (after the first token, e.g. a
decoder's BOS). A row without a prompt gets its P slots in front with segment id 0: they are
masked out of attention, so that row computes what the model computes without a prompt (up to
float rounding: T5's relative positions and the decoder's positions of real tokens do not move). Rows are not
packed (one example per row) whenever a prompt is attached (`data.pack=False`).

Evaluation detaches the prompt (`detach`: the model without its hook, i.e. the base model) or
keeps one task's row (`select`). Prompt-only checkpoints (`save` / `load`, a JSON + `.npy`
pair, a few KB) load onto any copy of the base model (`with_table`; a prompt inside a run
checkpoint: `mtjax.train.pretrained.load_prompt`). How a run config's prompt options are applied
(check, attach, re-init after `init_from`, rows per task) is `mtjax.peft.prompt_setup`'s.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax import fs

PLACEMENTS = ("prefix", "after_bos")
INITS = ("uniform", "vocab", "class_labels")
AXES = ("prompt", "prompt", "prompt")  # the `prompt` logical axis maps to no mesh axis: replicated
HOOK = "embed_hook"  # the models' attribute; the table is params[HOOK]["prompt"]
META_FILE, TABLE_FILE = "prompt.json", "prompt.npy"


class PromptParam(nnx.Param):
  """Soft-prompt vectors: a variable type of their own, so filters can tell them apart."""


def _prompt_param(table) -> PromptParam:
  table = jnp.asarray(table)
  if jax.sharding.get_abstract_mesh().empty:  # no mesh: keep the names, place nothing
    with nnx.use_eager_sharding(False):
      return PromptParam(table, sharding_names=AXES)
  return PromptParam(table, sharding_names=AXES)


class SoftPrompt(nnx.Module):
  """The `embed_hook`: inserts each example's prompt into the embedded inputs."""

  def __init__(self, table, placement: str = "prefix"):
    if placement not in PLACEMENTS:
      raise ValueError(f"model.prompt_placement must be one of {PLACEMENTS}, got {placement!r}")
    if np.ndim(table) != 3:
      raise ValueError(f"a prompt table is [num_prompts, length, d_model], got {np.shape(table)}")
    self.placement = placement
    self.prompt = _prompt_param(table)

  @property
  def length(self) -> int:
    return self.prompt.shape[1]

  def _rows(self, batch: int, prompt_ids):
    """(row ids `[B]` clamped to >= 0, has-prompt `[B]` bool)."""
    if prompt_ids is None:
      if self.prompt.shape[0] != 1:
        raise ValueError(f"{self.prompt.shape[0]} soft prompts: the batch needs `prompt_ids` "
                         "(the trainer derives them from task_ids; model.prompt_tasks)")
      ids = jnp.zeros((batch,), jnp.int32)
    else:
      ids = jnp.asarray(prompt_ids, jnp.int32).reshape(batch)
    return jnp.maximum(ids, 0), ids >= 0

  def _starts(self, has):
    """Per-row insertion index: 1 after BOS, else 0 (rows without a prompt: always 0)."""
    return jnp.where(has & (self.placement == "after_bos"), 1, 0).astype(jnp.int32)

  def insert(self, arr, fill, prompt_ids=None):
    """`arr [B, T, ...]` with P slots inserted where the prompt goes, holding `fill`
    (broadcastable to `[B, P, ...]`)."""
    b, t, p = arr.shape[0], arr.shape[1], self.length
    _, has = self._rows(b, prompt_ids)
    start = self._starts(has)[:, None]
    j = jnp.arange(t + p)[None]
    in_prompt = (j >= start) & (j < start + p)
    src = jnp.clip(jnp.where(j < start, j, j - p), 0, t - 1)
    taken = jnp.take_along_axis(arr, src.reshape(src.shape + (1,) * (arr.ndim - 2)), axis=1)
    fill = jnp.broadcast_to(jnp.asarray(fill, arr.dtype), (b, p) + arr.shape[2:])
    slot = jnp.clip(j - start, 0, p - 1)
    filled = jnp.take_along_axis(fill, slot.reshape(slot.shape + (1,) * (arr.ndim - 2)), axis=1)
    return jnp.where(in_prompt.reshape(in_prompt.shape + (1,) * (arr.ndim - 2)), filled, taken)

  def strip(self, arr, prompt_ids=None):
    """Inverse of `insert`: `[B, T + P, ...] -> [B, T, ...]` (e.g. a decoder's logits)."""
    b, t = arr.shape[0], arr.shape[1] - self.length
    _, has = self._rows(b, prompt_ids)
    start = self._starts(has)[:, None]
    j = jnp.arange(t)[None]
    src = jnp.where(j < start, j, j + self.length)
    return jnp.take_along_axis(arr, src.reshape(src.shape + (1,) * (arr.ndim - 2)), axis=1)

  def __call__(self, x, segment_ids, positions, prompt_ids=None):
    """(x, segment ids, positions) with the prompt inserted (the models' hook contract)."""
    b, t = x.shape[:2]
    p = self.length
    rows, has = self._rows(b, prompt_ids)
    vectors = jnp.take(self.prompt[...], rows, axis=0).astype(x.dtype)  # [B, P, D]
    x = self.insert(x, vectors, prompt_ids)
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
    seg_prompt = jnp.where(has[:, None], seg[:, :1], 0)  # no prompt: masked slots
    seg = self.insert(seg, seg_prompt, prompt_ids)
    if positions is not None:
      start = self._starts(has)[:, None]
      first = positions[:, :1]
      shifted = jnp.where((jnp.arange(t)[None] >= start) & has[:, None], positions + p, positions)
      slots = first + start + jnp.arange(p)[None]
      positions = self.insert(shifted, slots, prompt_ids)
    return x, seg, positions


# --- which row each example uses -------------------------------------------------------------

def task_rows(prompt_tasks: Sequence[str], task_names: Sequence[str]) -> np.ndarray:
  """Prompt row of each mixture task (`task_ids` order); -1 = evaluated/trained without one.

  No `prompt_tasks`: one shared prompt (row 0) for every task of the mixture.
  """
  if not prompt_tasks:
    return np.zeros(len(task_names), np.int32)
  index = {t: i for i, t in enumerate(prompt_tasks)}
  return np.asarray([index.get(t, -1) for t in task_names], np.int32)


def add_prompt_ids(batch: Mapping[str, np.ndarray], rows: np.ndarray) -> dict:
  """`prompt_ids [B]` from each row's task (`task_ids[:, 0]`: rows are not packed)."""
  return dict(batch, prompt_ids=rows[np.asarray(batch["task_ids"])[:, 0]].astype(np.int32))


# --- initialisation --------------------------------------------------------------------------

def embedding_rows(embedding) -> Callable[[Sequence[int]], np.ndarray]:
  """`rows(ids) -> [len(ids), d]` float32 rows of a (possibly sharded) embedding table, gathered
  on device and replicated, so no host ever fetches the whole table."""
  sharding = getattr(embedding, "sharding", None)
  replicated = (jax.sharding.NamedSharding(sharding.mesh, jax.P())
                if isinstance(sharding, jax.sharding.NamedSharding) else None)
  gather = jax.jit(lambda e, i: jnp.take(e, i, axis=0).astype(jnp.float32),
                   out_shardings=replicated)

  def rows(ids):
    return np.asarray(jax.device_get(gather(embedding, np.asarray(ids, np.int32))), np.float32)

  return rows


def initial_table(rows: Callable[[Sequence[int]], np.ndarray], *, num_prompts: int, length: int,
                  d_model: int, vocab_size: int, init: str, seed: int, init_range: float = 0.5,
                  init_vocab: int = 5000, label_ids: Sequence[Sequence[int]] = (),
                  scale: float = 1.0) -> np.ndarray:
  """A `[num_prompts, length, d_model]` float32 table (Lester et al.'s three initialisations).

  `rows(ids)`: embedding rows of token ids; times `scale` they are what the model's first layer
  sees (Gemma scales by sqrt(d)). `uniform`: U(-init_range, init_range). `vocab`: embeddings of
  tokens drawn from the first `init_vocab` ids. `class_labels`: position i < len(label_ids) is
  the mean of label i's sub-word embeddings, the rest drawn as for `vocab`. Every row of the
  table starts the same way.
  """
  if init not in INITS:
    raise ValueError(f"model.prompt_init must be one of {INITS}, got {init!r}")
  if length < 1:
    raise ValueError(f"model.prompt_length must be >= 1, got {length}")
  rng = np.random.default_rng([seed, 7])
  if init == "uniform":
    return rng.uniform(-init_range, init_range,
                       (num_prompts, length, d_model)).astype(np.float32)
  pool = min(init_vocab, vocab_size)
  ids = np.stack([rng.choice(pool, size=length, replace=length > pool)
                  for _ in range(num_prompts)])
  out = rows(ids.reshape(-1)).reshape(num_prompts, length, d_model) * scale
  if init == "class_labels":
    if not label_ids:
      raise ValueError("model.prompt_init='class_labels' needs model.prompt_labels")
    if len(label_ids) > length:
      raise ValueError(f"model.prompt_labels has {len(label_ids)} labels but "
                       f"model.prompt_length is {length}")
    for i, label in enumerate(label_ids):
      if not len(label):
        raise ValueError(f"model.prompt_labels[{i}] has no tokens")
      out[:, i] = rows(label).mean(0) * scale
  return out.astype(np.float32)


def label_token_ids(vocab, labels: Sequence[str]) -> list[list[int]]:
  """Sub-word ids of each label word (no EOS), with the task's vocabulary."""
  return [[int(i) for i in vocab.encode(label)] for label in labels]


def input_scale(model_cfg) -> float:
  return float(model_cfg.d_model) ** 0.5 if getattr(model_cfg, "scale_embeddings", False) else 1.0


def create(model, model_config, *, num_prompts: int, seed: int, vocab=None) -> SoftPrompt:
  """The hook a `schema.ModelConfig` asks for, initialised from `model`'s embedding."""
  params = nnx.state(model, nnx.Param).to_pure_dict()
  table = table_for(params, model_config, model.cfg, num_prompts=num_prompts, seed=seed,
                    vocab=vocab)
  return SoftPrompt(table, model_config.prompt_placement)


def table_for(params, model_config, family_cfg, *, num_prompts: int, seed: int, vocab=None):
  """`initial_table` from a `schema.ModelConfig` and the (pretrained) parameters."""
  labels = tuple(model_config.prompt_labels)
  if model_config.prompt_init == "class_labels" and vocab is None:
    raise ValueError("model.prompt_init='class_labels' needs the task's vocabulary")
  embedding = params["token_embed"]["embedding"]
  return initial_table(
      embedding_rows(embedding), num_prompts=num_prompts, length=model_config.prompt_length,
      d_model=embedding.shape[1], vocab_size=embedding.shape[0], init=model_config.prompt_init,
      seed=seed, init_range=model_config.prompt_init_range,
      init_vocab=model_config.prompt_init_vocab,
      label_ids=label_token_ids(vocab, labels) if labels else (),
      scale=input_scale(family_cfg))


# --- parameters with / without a prompt -------------------------------------------------------

def has_prompt(params: Mapping[str, Any]) -> bool:
  return HOOK in params and "prompt" in params[HOOK]


def table(params: Mapping[str, Any]):
  if not has_prompt(params):
    raise KeyError(f"these parameters have no soft prompt (no {HOOK}/prompt)")
  return params[HOOK]["prompt"]


def with_table(params: Mapping[str, Any], new_table) -> dict:
  """`params` with the prompt table replaced (same shape, dtype and sharding as the old one)."""
  old = table(params)
  new_table = jnp.asarray(new_table, old.dtype)
  if new_table.shape != old.shape:
    raise ValueError(f"prompt table shape {tuple(new_table.shape)} does not fit the model's "
                     f"{tuple(old.shape)} (model.prompt_length, model.prompt_tasks)")
  sharding = getattr(old, "sharding", None)
  if sharding is not None:
    new_table = jax.device_put(new_table, sharding)
  return dict(params, **{HOOK: dict(params[HOOK], prompt=new_table)})


def detach(graphdef, params):
  """(graphdef, params) of the same model without its soft prompt: the base model."""
  if not has_prompt(params):
    return graphdef, params
  model = nnx.merge(graphdef, params)
  model.embed_hook = None
  graphdef, state = nnx.split(model)
  return graphdef, state.to_pure_dict()


def select(graphdef, params, row: int):
  """(graphdef, params) for evaluating one task: its prompt row alone (-1: detached)."""
  if not has_prompt(params):
    return graphdef, params
  if row < 0:
    return detach(graphdef, params)
  t = table(params)
  return graphdef, dict(params, **{HOOK: dict(params[HOOK], prompt=t[row:row + 1])})


# --- prompt-only checkpoints -----------------------------------------------------------------

def save(directory: str, prompt_table, meta: Mapping[str, Any] | None = None) -> str:
  """Writes `prompt.npy` (float32 table) and `prompt.json` (shape, tasks, provenance)."""
  directory = fs.abspath(directory)
  fs.makedirs(directory)
  arr = np.asarray(jax.device_get(prompt_table), np.float32)
  buffer = io.BytesIO()
  np.save(buffer, arr)
  if fs.is_url(directory):  # one object upload: never seen half-written
    with fs.open(os.path.join(directory, TABLE_FILE), "wb") as f:
      f.write(buffer.getvalue())
  else:
    tmp = os.path.join(directory, f"{TABLE_FILE}.tmp{os.getpid()}")  # one per writer
    with open(tmp, "wb") as f:
      f.write(buffer.getvalue())
    os.replace(tmp, os.path.join(directory, TABLE_FILE))
  info = dict(meta or {}, num_prompts=arr.shape[0], length=arr.shape[1], d_model=arr.shape[2])
  fs.write_json(os.path.join(directory, META_FILE), info, indent=1)
  return directory


def is_prompt_dir(path: str) -> bool:
  """Whether `path` is a prompt directory written by `save`."""
  return fs.exists(os.path.join(fs.abspath(path), TABLE_FILE))


def load(path: str) -> tuple[np.ndarray, dict]:
  """(table, meta) from a prompt directory (`save`). The prompt inside a run checkpoint is read
  by `mtjax.train.pretrained.load_prompt` (the checkpoint format is the trainer's)."""
  path = fs.abspath(path)
  if not is_prompt_dir(path):
    raise FileNotFoundError(f"{path}: not a prompt directory (no {TABLE_FILE})")
  meta = {}
  if fs.exists(os.path.join(path, META_FILE)):
    meta = fs.read_json(os.path.join(path, META_FILE))
  return np.load(io.BytesIO(fs.read_bytes(os.path.join(path, TABLE_FILE)))), meta
