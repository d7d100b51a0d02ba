"""Search algorithms on a synthetic model with a known next-token table, checked by brute force.

The "model" is a trie: every prefix is a node with its own random next-token logits, so the
log-probability of every sequence is known exactly and all sequences can be enumerated.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtjax.eval import decoding

V, L, EOS = 4, 4, 1  # vocabulary, max length, EOS id
NODES = sum(V ** d for d in range(L))  # prefixes of length < L


def _tables(batch, seed=0, sharpness=2.0):
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(batch, NODES, V)) * sharpness
  t[..., 0] = -30.0  # the pad id: never worth choosing, so outputs are unambiguous
  return jnp.asarray(t, jnp.float32)


def _model(tables):
  """(first logits, cache, step_fn) of the trie model; cache leaves are per row."""
  batch = tables.shape[0]
  rows = jnp.arange(batch)
  cache = {"row": rows, "node": jnp.zeros((batch,), jnp.int32)}

  def step_fn(cache, tokens):
    node = cache["node"] * V + tokens + 1
    return tables[cache["row"], node], dict(cache, node=node)

  return tables[:, 0], cache, step_fn


def _brute_force(table, alpha):
  """Best (sequence, score) over all sequences ending in EOS or reaching length L."""
  logp = np.asarray(jax.nn.log_softmax(table, -1))
  best = (None, -np.inf)
  for n in range(1, L + 1):
    for seq in itertools.product(range(V), repeat=n):
      if EOS in seq[:-1] or (n < L and seq[-1] != EOS):
        continue
      node, total = 0, 0.0
      for t in seq:
        total += logp[node, t]
        node = node * V + t + 1
      score = total / decoding.length_penalty(n, alpha)
      if score > best[1]:
        best = (seq, score)
  return best


def _pad(seq):
  return list(seq) + [0] * (L - len(seq))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_best_sequence(alpha):
  tables = _tables(6, seed=1)
  logits, cache, step = _model(tables)
  search = jax.jit(lambda lg, c: decoding.beam_search(lg, c, step, max_length=L, eos_id=EOS,
                                                      beam_size=V * 3 ** (L - 1), alpha=alpha))
  seqs, scores = search(logits, cache)
  greedy = decoding.greedy(logits, cache, step, max_length=L, eos_id=EOS)
  greedy_worse = 0
  for b in range(tables.shape[0]):
    best_seq, best_score = _brute_force(tables[b], alpha)
    assert list(np.asarray(seqs[b, 0])) == _pad(best_seq)
    np.testing.assert_allclose(float(scores[b, 0]), best_score, rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores[b])) <= 1e-6)  # sorted best first
    greedy_worse += list(np.asarray(greedy[b])) != _pad(best_seq)
  if alpha == 0.0:
    assert greedy_worse > 0  # the table is one where search beats greedy


def test_beam_size_one_is_greedy():
  tables = _tables(8, seed=2)
  logits, cache, step = _model(tables)
  greedy = decoding.greedy(logits, cache, step, max_length=L, eos_id=EOS)
  seqs, _ = decoding.beam_search(logits, cache, step, max_length=L, eos_id=EOS, beam_size=1,
                                 alpha=0.0)
  np.testing.assert_array_equal(seqs[:, 0], greedy)


def test_greedy_is_argmax_and_stops_at_eos():
  tables = _tables(5, seed=3)
  logits, cache, step = _model(tables)
  out = np.asarray(decoding.greedy(logits, cache, step, max_length=L, eos_id=EOS))
  for b in range(5):
    node, expected = 0, []
    for _ in range(L):
      t = int(np.argmax(tables[b, node]))
      expected.append(t)
      if t == EOS:
        break
      node = node * V + t + 1
    assert list(out[b]) == _pad(expected)


def test_sampling_with_top_k_one_is_greedy():
  tables = _tables(8, seed=4, sharpness=0.5)
  logits, cache, step = _model(tables)
  greedy = decoding.greedy(logits, cache, step, max_length=L, eos_id=EOS)
  sampled = jax.jit(lambda rng: decoding.sample(logits, cache, step, rng, max_length=L,
                                                eos_id=EOS, temperature=1.5, top_k=1))
  for seed in range(3):
    np.testing.assert_array_equal(sampled(jax.random.key(seed)), greedy)
  # With no filtering, flat-ish tables sample something other than greedy (the rng is used).
  free = decoding.sample(logits, cache, step, jax.random.key(0), max_length=L, eos_id=EOS)
  assert not np.array_equal(np.asarray(free), np.asarray(greedy))


def test_top_p_keeps_the_nucleus():
  probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5], [0.25, 0.25, 0.4, 0.1]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  kept = lambda p: np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=p)))
  # Hand-computed: keep the most likely tokens until their mass reaches p.
  np.testing.assert_array_equal(kept(0.7), [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(kept(0.5), [[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]])
  np.testing.assert_array_equal(kept(0.9), [[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(kept(1.0), np.ones_like(probs))
  # Sampling from the nucleus only ever yields nucleus tokens, in renormalised proportions.
  draws = jax.random.categorical(jax.random.key(0), decoding.filter_logits(logits[:1], top_p=0.7),
                                 shape=(8000, 1))
  freq = np.bincount(np.asarray(draws).ravel(), minlength=4) / 8000
  np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.025)


def test_top_k_and_temperature():
  logits = jnp.asarray([[1.0, 3.0, 2.0, 0.0]])
  out = np.asarray(decoding.filter_logits(logits, temperature=2.0, top_k=2))
  np.testing.assert_allclose(out, [[-np.inf, 1.5, 1.0, -np.inf]])
