"""Search over next-token distributions: greedy, beam search, temperature / top-k / top-p sampling.

Model-agnostic by design: each algorithm takes the first logits `[B, V]`, a cache and
`step_fn(cache, tokens [B]) -> (logits [B, V], cache)` (the model families' `decode_step`,
see `mtjax.eval.generate`), so it is tested on a synthetic "model" with a known table. Every
cache leaf has the batch as its leading axis; beam search tiles it to `B * K` rows and gathers
it by parent beam with `jax.tree.map`. Shapes are static and everything is jit-able.

Outputs are `[B, max_length]` token ids; positions after the first EOS are 0. A sequence ends
at EOS (included in its length) or when it reaches `max_length`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -jnp.inf


def _token_loop(logits, cache, step_fn: StepFn, choose, *, max_length: int, eos_id: int):
  """Shared by greedy and sampling: `choose(logits, i) -> tokens` at each position `i`.

  The step function is called only for tokens that still need a successor (never past
  `max_length`), and the loop exits early once every row has emitted EOS.
  """
  batch = logits.shape[0]

  def pick(logits, i, done):
    token = jnp.where(done, 0, choose(logits, i)).astype(jnp.int32)
    return token, done | (token == eos_id)

  out = jnp.zeros((batch, max_length), jnp.int32)
  token, done = pick(logits, 0, jnp.zeros((batch,), bool))
  out = out.at[:, 0].set(token)

  def body(carry):
    i, token, cache, out, done = carry
    logits, cache = step_fn(cache, token)
    token, done = pick(logits, i, done)
    out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
    return i + 1, token, cache, out, done

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_length) & ~jnp.all(done)

  _, _, _, out, _ = jax.lax.while_loop(cond, body, (1, token, cache, out, done))
  return out


def greedy(logits, cache, step_fn: StepFn, *, max_length: int, eos_id: int) -> jax.Array:
  """Argmax at every position."""
  return _token_loop(logits, cache, step_fn, lambda lg, i: jnp.argmax(lg, -1),
                     max_length=max_length, eos_id=eos_id)


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Temperature, then top-k, then nucleus (top-p) filtering; removed tokens get -inf.

  Top-p keeps the smallest set of most likely tokens whose probability reaches `p`: a token is
  kept when the mass of the tokens ranked above it is below `p` (so the crossing token stays).
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, -1), order, -1)
    keep_sorted = (jnp.cumsum(sorted_probs, -1) - sorted_probs) < top_p
    rows = jnp.arange(logits.shape[0])[:, None]
    keep = jnp.zeros_like(keep_sorted).at[rows, order].set(keep_sorted)
    logits = jnp.where(keep, logits, NEG_INF)
  return logits


def sample(logits, cache, step_fn: StepFn, rng: jax.Array, *, max_length: int, eos_id: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Ancestral sampling; position `i` draws with `fold_in(rng, i)`. Temperature 0 = greedy."""
  if temperature == 0.0:
    return greedy(logits, cache, step_fn, max_length=max_length, eos_id=eos_id)

  def choose(lg, i):
    filtered = filter_logits(lg, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)

  return _token_loop(logits, cache, step_fn, choose, max_length=max_length, eos_id=eos_id)


def length_penalty(length, alpha: float):
  """GNMT / T5X brevity penalty `((5 + length) / 6) ** alpha`; scores are log-prob / penalty."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(x, index):
  """`x[b, index[b, j]]` for `x [B, K, ...]`, `index [B, J]`."""
  return jax.vmap(lambda row, idx: row[idx])(x, index)


def _gather_cache(cache, parent, batch: int, beams: int):
  def gather(leaf):
    rows = leaf.reshape((batch, beams) + leaf.shape[1:])
    return _gather_beams(rows, parent).reshape(leaf.shape)
  return jax.tree.map(gather, cache)


def beam_search(logits, cache, step_fn: StepFn, *, max_length: int, eos_id: int,
                beam_size: int, alpha: float = 0.6) -> tuple[jax.Array, jax.Array]:
  """Beam search with finished-beam bookkeeping; returns (`[B, K, L]` tokens, `[B, K]` scores).

  Beams are sorted best first; a score is the sequence log-probability divided by
  `length_penalty(length, alpha)` (alpha 0: plain log-probability). Each step keeps the top
  `2K` expansions: those ending in EOS and ranked in the top K compete for the `K` finished
  slots, the non-EOS ones for the `K` live slots (at most K end in EOS, so K live remain).
  With beam size 1 and alpha 0 this is greedy decoding. Sequences that reach `max_length`
  without EOS are finished there. The search stops early once no live beam can beat the K-th
  finished one (log-probabilities only fall, and with alpha >= 0 the penalty is largest at
  `max_length`).
  """
  batch, vocab = logits.shape
  k = beam_size
  if alpha < 0:
    raise ValueError(f"beam search length penalty alpha must be >= 0, got {alpha}")
  cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)
  log_probs = jnp.repeat(jax.nn.log_softmax(logits.astype(jnp.float32))[:, None], k, 1)
  live_lp = jnp.concatenate([jnp.zeros((batch, 1)), jnp.full((batch, k - 1), NEG_INF)], 1)
  live_seq = jnp.zeros((batch, k, max_length), jnp.int32)
  fin_seq = jnp.zeros((batch, k, max_length), jnp.int32)
  fin_score = jnp.full((batch, k), NEG_INF)

  def expand(i, log_probs, live_lp, live_seq, fin_seq, fin_score):
    candidates = (live_lp[..., None] + log_probs).reshape(batch, k * vocab)
    top_lp, top_idx = jax.lax.top_k(candidates, 2 * k)
    parent, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = _gather_beams(live_seq, parent)
    seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, i, axis=2)
    is_eos = token == eos_id
    # As in GNMT/Hugging Face, an EOS expansion finishes only if it ranks among the top K (so
    # beam size 1 is greedy); the rest of the 2K just keep K live beams available.
    in_top_k = jnp.arange(2 * k)[None] < k
    new_scores = jnp.where(is_eos & in_top_k, top_lp / length_penalty(i + 1.0, alpha), NEG_INF)
    fin_score, idx = jax.lax.top_k(jnp.concatenate([fin_score, new_scores], 1), k)
    fin_seq = _gather_beams(jnp.concatenate([fin_seq, seqs], 1), idx)
    live_lp, idx = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
    return (_gather_beams(parent, idx), _gather_beams(token, idx), live_lp,
            _gather_beams(seqs, idx), fin_seq, fin_score)

  state = expand(0, log_probs, live_lp, live_seq, fin_seq, fin_score)
  max_penalty = length_penalty(float(max_length), alpha)

  def cond(carry):
    i, _, (_, _, live_lp, _, _, fin_score) = carry
    best_possible = live_lp[:, 0] / max_penalty
    return (i < max_length) & ~jnp.all(fin_score[:, -1] >= best_possible)

  def body(carry):
    i, cache, (parent, token, live_lp, live_seq, fin_seq, fin_score) = carry
    cache = _gather_cache(cache, parent, batch, k)
    logits, cache = step_fn(cache, token.reshape(batch * k))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    return i + 1, cache, expand(i, log_probs, live_lp, live_seq, fin_seq, fin_score)

  i, _, (_, _, live_lp, live_seq, fin_seq, fin_score) = jax.lax.while_loop(
      cond, body, (1, cache, state))
  # Live beams that reached max_length end there (not when the loop stopped early).
  truncated = jnp.where(i >= max_length, live_lp / max_penalty, NEG_INF)
  fin_score, idx = jax.lax.top_k(jnp.concatenate([fin_score, truncated], 1), k)
  fin_seq = _gather_beams(jnp.concatenate([fin_seq, live_seq], 1), idx)
  return fin_seq, fin_score
