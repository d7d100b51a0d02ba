"""Evaluation speed: rank classification and greedy decoding, mtjax vs `transformers` (torch).

Both sides hold the same random weights (the mtjax model exported with `mtjax.models.hf.export`
and loaded by `transformers`). The workload is T0's held-out shape: examples with a 200-300
token input and 4 answer choices of 2-8 tokens, every (input, choice) pair scored.

Rank classification, pairs/s (higher is better):
- mtjax: `mtjax.eval.scoring.score_pairs`, what `mtjax eval` runs, at three configured data
  lengths (`tight`: the longest input and choice; `512/64`; T0's `1024/256`);
- transformers, per pair: every (input, choice) pair one row of a full forward, batches sorted
  by length and padded to their longest row (lm-evaluation-harness's `hf` backend);
- transformers, input once: T5's encoder once per input and the decoder per choice; a decoder's
  prompt once with `use_cache`, its KV cache repeated for the choices (left-padded prompts).
Greedy decoding, generated tokens/s: mtjax's evaluation path (`generate.generate` over
length-bucketed batches) vs `model.generate(do_sample=False)`, same prompts, same number of new
tokens; the tokens are compared.

Times are the best of `--repeats` interleaved runs after one warm-up run of each side (mtjax's
compiles are in the warm-up; their count and time are printed). Prints one JSON line per model
with every figure and the ratios mtjax / transformers.

  python scripts/bench_eval.py                      # t5_1_1_small and llama_270m shapes
  python scripts/bench_eval.py --presets=llama_270m --decoder_examples=16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mtjax.eval import batching, generate, scoring  # noqa: E402
from mtjax.models import hf, registry, t5  # noqa: E402

LENGTHS = {"tight": None, "512/64": (512, 64), "1024/256": (1024, 256)}


def workload(vocab: int, examples: int, choices: int, seed: int = 0):
  """(inputs, [choices per example]) token lists; no id below 3 (pad / EOS / BOS)."""
  rng = np.random.default_rng(seed)
  inputs = [list(map(int, rng.integers(3, vocab, rng.integers(200, 301))))
            for _ in range(examples)]
  options = [[list(map(int, rng.integers(3, vocab, rng.integers(2, 9)))) for _ in range(choices)]
             for _ in range(examples)]
  return inputs, options


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


# --- mtjax -------------------------------------------------------------------------------------

class Mtjax:
  def __init__(self, model, family: str, batch: int):
    self.graphdef, state = nnx.split(model)
    self.params = jax.device_put(state.to_pure_dict())
    self.family, self.batch = family, batch

  def rank(self, inputs, options, lengths):
    pairs = [(x, c) for x, cs in zip(inputs, options) for c in cs]
    out = scoring.score_pairs(self.graphdef, self.params, pairs, lengths=lengths,
                              family=self.family, batch_size=self.batch, start_id=self.start)
    return np.asarray(out["sum"], np.float64)

  @property
  def start(self) -> int:
    return 0 if self.family == "enc_dec" else 1  # the decoder's BOS, as an HF Llama's

  def greedy(self, inputs, new_tokens: int, eos_id: int, input_length: int):
    options = generate.DecodeOptions(max_length=new_tokens, eos_id=eos_id)
    lengths = [len(x) for x in inputs]
    tokens = np.zeros((len(inputs), input_length), np.int32)
    for r, x in enumerate(inputs):
      tokens[r, :len(x)] = x
    rng = jax.random.key(0)
    ids, _ = batching.map_batches(
        lambda b: generate.generate(self.graphdef, self.params, b, rng, options=options),
        generate.prompt_batch(self.family, tokens, lengths, start_id=self.start),
        batch_size=self.batch, row_lengths=generate.prompt_row_lengths(self.family, lengths),
        name="generate")
    return np.asarray(ids)


# --- transformers ------------------------------------------------------------------------------

class Torch:
  def __init__(self, hf_dir: str, family: str, batch: int):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.torch = torch
    auto = (transformers.AutoModelForSeq2SeqLM if family == "enc_dec"
            else transformers.AutoModelForCausalLM)
    self.model = auto.from_pretrained(hf_dir, dtype=torch.float32).eval()
    self.family, self.batch = family, batch

  def _log_probs(self, logits, targets, mask):
    lp = self.torch.log_softmax(logits.float(), -1)
    picked = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1).double().numpy()

  def _pad(self, rows, left=False):
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
      sl = slice(width - len(r), width) if left else slice(0, len(r))
      ids[i, sl], mask[i, sl] = r, 1
    return self.torch.from_numpy(ids), self.torch.from_numpy(mask)

  def per_pair(self, inputs, options):
    """Every (input, choice) pair as one row, lm-eval `hf` style: sorted longest first."""
    pairs = [(x, c) for x, cs in zip(inputs, options) for c in cs]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out = np.zeros(len(pairs))
    with self.torch.inference_mode():
      for s in range(0, len(order), self.batch):
        chunk = order[s:s + self.batch]
        if self.family == "enc_dec":
          enc, enc_mask = self._pad([pairs[i][0] for i in chunk])
          labels, lab_mask = self._pad([pairs[i][1] for i in chunk])
          logits = self.model(input_ids=enc, attention_mask=enc_mask, labels=labels).logits
          out[chunk] = self._log_probs(logits, labels, lab_mask)
        else:
          rows = [[1] + pairs[i][0] + pairs[i][1] for i in chunk]
          ids, mask = self._pad(rows)
          logits = self.model(input_ids=ids, attention_mask=mask).logits
          for r, i in enumerate(chunk):
            n, c = len(rows[r]), len(pairs[i][1])
            lp = self.torch.log_softmax(logits[r, n - c - 1:n - 1].float(), -1)
            out[i] = float(lp.gather(-1, ids[r, n - c:n].unsqueeze(-1)).sum())
    return out

  def input_once(self, inputs, options):
    """Each input run once (T5: encoder outputs reused; decoders: the prompt's KV cache)."""
    torch = self.torch
    per = len(options[0])
    examples = max(1, self.batch // per)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    out = np.zeros((len(inputs), per))
    with torch.inference_mode():
      for s in range(0, len(order), examples):
        chunk = order[s:s + examples]
        choices = [c for i in chunk for c in options[i]]
        labels, lab_mask = self._pad(choices)
        if self.family == "enc_dec":
          enc, enc_mask = self._pad([inputs[i] for i in chunk])
          encoded = self.model.get_encoder()(input_ids=enc, attention_mask=enc_mask)
          hidden = encoded.last_hidden_state.repeat_interleave(per, 0)
          logits = self.model(encoder_outputs=(hidden,),
                              attention_mask=enc_mask.repeat_interleave(per, 0),
                              labels=labels).logits
          out[chunk] = self._log_probs(logits, labels, lab_mask).reshape(len(chunk), per)
        else:
          prompt, p_mask = self._pad([[1] + inputs[i] for i in chunk], left=True)
          positions = (p_mask.cumsum(-1) - 1).clamp(min=0)
          first = self.model(input_ids=prompt, attention_mask=p_mask, position_ids=positions,
                             use_cache=True)
          cache = first.past_key_values
          cache.batch_repeat_interleave(per)
          last = torch.log_softmax(first.logits[:, -1].float(), -1).repeat_interleave(per, 0)
          mask = torch.cat([p_mask.repeat_interleave(per, 0), lab_mask], -1)
          start = positions[:, -1:].repeat_interleave(per, 0) + 1
          logits = self.model(input_ids=labels, attention_mask=mask, past_key_values=cache,
                              position_ids=start + torch.arange(labels.shape[1])[None]).logits
          lp = torch.log_softmax(logits[:, :-1].float(), -1)
          rest = (lp.gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1) * lab_mask[:, 1:]).sum(-1)
          total = last.gather(-1, labels[:, :1]).squeeze(-1) + rest
          out[chunk] = total.double().numpy().reshape(len(chunk), per)
    return out.reshape(-1)

  def greedy(self, inputs, new_tokens: int, eos_id: int):
    out = []
    with self.torch.inference_mode():
      for s in range(0, len(inputs), self.batch):
        rows = inputs[s:s + self.batch]
        if self.family == "enc_dec":
          ids, mask = self._pad(rows)
        else:
          ids, mask = self._pad([[1] + r for r in rows], left=True)
        gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                  max_new_tokens=new_tokens, eos_token_id=eos_id,
                                  pad_token_id=0, num_beams=1)
        gen = gen[:, 1:] if self.family == "enc_dec" else gen[:, ids.shape[1]:]
        out += [list(map(int, g)) for g in gen]
    return out


def _cut(ids, eos_id: int) -> list[int]:
  ids = [int(t) for t in ids]
  return ids[:ids.index(eos_id) + 1] if eos_id in ids else ids


def bench(preset: str, args) -> dict:
  cfg = registry.config(preset)
  family = "enc_dec" if isinstance(cfg, t5.T5Config) else "decoder_only"
  model = registry.build(cfg, rngs=nnx.Rngs(params=0))
  examples = args.examples if family == "enc_dec" else args.decoder_examples
  inputs, options = workload(cfg.vocab_size, examples, args.choices)
  pairs = sum(len(c) for c in options)
  row = {"preset": preset, "device": jax.devices()[0].device_kind, "examples": len(inputs),
         "pairs": pairs, "batch_pairs": args.batch}
  with tempfile.TemporaryDirectory() as tmp:
    hf.export(model, tmp)
    torch_side = Torch(tmp, family, args.batch)
  mine = Mtjax(model, family, args.batch)
  longest = (max(len(x) for x in inputs), max(len(c) for cs in options for c in cs))
  lengths = {name: dict(zip(("inputs", "targets"), value or longest))
             for name, value in LENGTHS.items()}
  sides = {f"mtjax_{name}": (lambda L=L: mine.rank(inputs, options, L))
           for name, L in lengths.items()}
  sides["hf_per_pair"] = lambda: torch_side.per_pair(inputs, options)
  sides["hf_input_once"] = lambda: torch_side.input_once(inputs, options)
  batching.SHAPES = batching.Shapes()
  scores, best = {}, {}
  for name, fn in sides.items():  # warm-up (compiles), and the scores to compare
    seconds, scores[name] = timed(fn)
    if name.startswith("mtjax"):
      row[f"{name}_first_s"] = round(seconds, 2)
  row["mtjax_rank_shapes"] = len(batching.SHAPES)
  row["max_abs_diff_vs_hf"] = round(float(np.max(np.abs(scores["mtjax_tight"]
                                                        - scores["hf_per_pair"]))), 6)
  row["max_abs_diff_hf_once_vs_pair"] = round(float(np.max(np.abs(
      scores["hf_input_once"] - scores["hf_per_pair"]))), 6)
  for _ in range(args.repeats):
    for name, fn in sides.items():
      best[name] = min(best.get(name, np.inf), timed(fn)[0])
  for name, seconds in best.items():
    row[f"{name}_pairs_per_s"] = round(pairs / seconds, 2)
  for name in lengths:
    row[f"ratio_{name}_vs_hf_per_pair"] = round(best["hf_per_pair"] / best[f"mtjax_{name}"], 3)
    row[f"ratio_{name}_vs_hf_input_once"] = round(best["hf_input_once"] / best[f"mtjax_{name}"],
                                                  3)
  if args.new_tokens:
    eos = 1 if family == "enc_dec" else 2
    prompts = inputs[:args.gen_examples]
    gen = {"mtjax": lambda: mine.greedy(prompts, args.new_tokens, eos, 1024),
           "hf": lambda: torch_side.greedy(prompts, args.new_tokens, eos)}
    outs, times = {}, {}
    batching.SHAPES = batching.Shapes()
    for name, fn in gen.items():
      outs[name] = fn()
    row["mtjax_generate_shapes"] = len(batching.SHAPES)
    for _ in range(args.repeats):
      for name, fn in gen.items():
        times[name] = min(times.get(name, np.inf), timed(fn)[0])
    mine_ids = [_cut(x, eos) for x in outs["mtjax"]]
    hf_ids = [_cut(x, eos) for x in outs["hf"]]
    row["greedy_tokens_identical"] = mine_ids == hf_ids
    row["greedy_rows_identical"] = sum(a == b for a, b in zip(mine_ids, hf_ids))
    tokens = sum(len(x) for x in hf_ids)
    for name in gen:
      row[f"{name}_generate_tokens_per_s"] = round(tokens / times[name], 1)
    row["ratio_greedy_vs_hf_generate"] = round(times["hf"] / times["mtjax"], 3)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="t5_1_1_small,llama_270m")
  parser.add_argument("--examples", type=int, default=16, help="examples (T5 shapes)")
  parser.add_argument("--decoder_examples", type=int, default=8, help="examples (decoders)")
  parser.add_argument("--choices", type=int, default=4)
  parser.add_argument("--batch", type=int, default=32, help="pairs per batch (eval.batch_size)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--new_tokens", type=int, default=16, help="greedy tokens (0: skip)")
  parser.add_argument("--gen_examples", type=int, default=8)
  args = parser.parse_args()
  for preset in args.presets.split(","):
    print(json.dumps(bench(preset, args)), flush=True)


if __name__ == "__main__":
  main()
