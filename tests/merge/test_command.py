"""`mtjax merge` end to end: a tiny random HF Llama base, two finetuned runs (one a LoRA run,
merged into dense weights first) -> TIES -> an mtjax run dir and a HF dir; the merged weights
equal numpy's TIES of the hand-folded inputs, transformers loads the HF dir and computes the
merged model's logits (1e-4), `mtjax export` of the run dir gives the same, and eval's restore
reads it. A T5 merge of HF dirs with LiNeS (encoder and decoder stacks scaled on their own).
Mismatched inputs: one `error:` line naming the first differing parameter and both shapes."""

import json
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mtjax import cli  # noqa: E402
from mtjax.config import schema  # noqa: E402
from mtjax.merge import load as load_lib  # noqa: E402
from mtjax.merge import methods  # noqa: E402
from mtjax.models import hf, registry, store  # noqa: E402
from mtjax.train import checkpoint as ckpt_lib  # noqa: E402

RANK, ALPHA = 2, 4.0
TOKENS = np.array([[5, 17, 42, 8, 99, 3, 250], [7, 7, 300, 12, 1, 64, 2]], np.int32)
ENC = np.array([[5, 17, 42, 8, 33, 3], [7, 7, 60, 12, 1, 0]], np.int32)
DEC = np.array([[0, 9, 4, 70, 2], [0, 11, 11, 5, 80]], np.int32)


def _llama(path):
  config = transformers.LlamaConfig(
      vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)


def _flat(model):
  return {k: np.asarray(v) for k, v in load_lib.flatten(nnx.state(model).to_pure_dict()).items()}


def _write_run(run_dir, cache_dir, source, params: dict, **model):
  """A run dir as the trainer leaves it (config.json, checkpoints/5/params), without training."""
  cfg = schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=cache_dir, inputs_length=32,
                             targets_length=8, feature_converter="decoder_only"),
      model=schema.ModelConfig(hf_checkpoint=source, **model))
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(schema.to_dict(cfg), f)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(run_dir, "checkpoints", "5", "params"),
                    load_lib.unflatten(params))
  checkpointer.wait_until_finished()


def _np_ties(base, fts, density):
  """TIES by hand: per tensor top-k by magnitude, elected sign (ties: majority, then +),
  disjoint mean."""
  out = {}
  for k, b in base.items():
    trimmed = []
    for f in fts:
      t = (f[k] - b).ravel()
      keep = np.zeros(t.size, bool)
      keep[np.argsort(-np.abs(t), kind="stable")[:math.floor(density * t.size + 1e-9)]] = True
      trimmed.append(np.where(keep, t, 0).astype(np.float32))
    total = trimmed[0] + trimmed[1]
    sign = np.sign(total)
    sign[sign == 0] = np.sign(sign.sum()) or 1
    num = sum(np.where(np.sign(t) == sign, t, 0) for t in trimmed)
    cnt = sum((np.sign(t) == sign).astype(np.float32) for t in trimmed)
    out[k] = (b.ravel() + num / np.maximum(cnt, 1)).reshape(b.shape).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def decoder_merge(tmp_path_factory, synthetic_cache):
  tmp = tmp_path_factory.mktemp("merge")
  source = str(tmp / "source")
  _llama(source)
  base = _flat(hf.load(source))
  rng = np.random.default_rng(0)
  ft1 = {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in base.items()}
  _write_run(str(tmp / "ft1"), synthetic_cache, source, ft1)
  # A LoRA run: base weights unchanged, adapters with a nonzero B on query, value and up.
  cfg = registry.architecture(schema.ModelConfig(
      hf_checkpoint=source, lora_rank=RANK, lora_alpha=ALPHA,
      lora_targets=("query", "value", "up")))
  lora_params = load_lib.flatten(nnx.state(nnx.eval_shape(
      lambda: registry.build(cfg, rngs=nnx.Rngs(0)))).to_pure_dict())
  ft2_run, ft2_dense = {}, dict(base)
  for k, v in lora_params.items():
    if k in base:
      ft2_run[k] = base[k]
    else:
      ft2_run[k] = rng.normal(0, 0.3, v.shape).astype(np.float32)
  for k in list(ft2_run):
    if k.endswith("_lora/a"):
      stem = k[:-len("_lora/a")]
      ft2_dense[stem] = (base[stem] + ALPHA / RANK * np.tensordot(
          ft2_run[k], ft2_run[stem + "_lora/b"], 1)).astype(np.float32)
  _write_run(str(tmp / "ft2"), synthetic_cache, source, ft2_run, lora_rank=RANK,
             lora_alpha=ALPHA, lora_targets=("query", "value", "up"))
  out, out_hf = str(tmp / "merged"), str(tmp / "merged_hf")
  cli.main(["merge", f"--base={source}", "--models", str(tmp / "ft1"), str(tmp / "ft2"),
            "--method=ties", "--density=0.4", f"--out={out}", f"--out_hf={out_hf}"])
  return {"tmp": tmp, "base": base, "fts": [ft1, ft2_dense], "out": out, "out_hf": out_hf}


def test_merged_run_dir_holds_numpys_ties_of_the_lora_folded_inputs(decoder_merge):
  want = _np_ties(decoder_merge["base"], decoder_merge["fts"], 0.4)
  got = _flat(store.load_any(decoder_merge["out"]))
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2e-7, err_msg=k)
  recipe = json.load(open(os.path.join(decoder_merge["out"], "merge.json")))
  assert recipe["method"]["method"] == "ties" and recipe["method"]["density"] == 0.4
  assert recipe["models"][1].endswith("ft2 (step 5)")
  cfg = schema.from_dict(json.load(open(os.path.join(decoder_merge["out"], "config.json"))))
  assert cfg.model.lora_rank == 0 and cfg.run_dir == decoder_merge["out"]
  # What `mtjax eval` does with it: the run's model, restored from the newest checkpoint.
  model = registry.create(cfg.model, seed=0)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(decoder_merge["out"], "checkpoints"),
                                       save_every=1, keep=1)
  params = checkpointer.restore_params(checkpointer.latest_step(),
                                       nnx.state(model).to_pure_dict())
  checkpointer.close()
  np.testing.assert_array_equal(np.asarray(params["lm_head"]), got["lm_head"])


def test_merged_hf_dir_computes_the_merged_models_logits(decoder_merge, tmp_path):
  model = store.load_any(decoder_merge["out"])
  ours = np.asarray(model({"decoder_input_tokens": TOKENS}))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(decoder_merge["out_hf"]).eval()
  with torch.no_grad():
    theirs = reloaded(input_ids=torch.tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  base = transformers.AutoModelForCausalLM.from_pretrained(
      str(decoder_merge["tmp"] / "source")).eval()
  with torch.no_grad():
    assert np.abs(base(input_ids=torch.tensor(TOKENS)).logits.numpy() - theirs).max() > 1e-2
  # `mtjax export` of the merged run dir writes the same model.
  cli.main(["export", f"--checkpoint={decoder_merge['out']}", f"--out={tmp_path / 'exp'}"])
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exp")).eval()
  with torch.no_grad():
    np.testing.assert_allclose(again(input_ids=torch.tensor(TOKENS)).logits.numpy(), theirs,
                               atol=1e-6, rtol=0)


def _t5(path, seed, d_ff=48, base=None):
  config = transformers.T5Config(
      vocab_size=96, d_model=32, d_kv=8, d_ff=d_ff, num_heads=4, num_layers=3,
      num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
  torch.manual_seed(seed)
  model = transformers.AutoModelForSeq2SeqLM.from_config(config)
  if base is not None:  # a "finetuned" copy: the base plus noise
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in base.state_dict().items()}
    model.load_state_dict(state)
  model.save_pretrained(path)
  return model


def test_t5_hf_dirs_merge_with_lines_per_stack(tmp_path):
  base = _t5(str(tmp_path / "base"), 0)
  _t5(str(tmp_path / "a"), 1, base=base)
  _t5(str(tmp_path / "b"), 2, base=base)
  out_hf = str(tmp_path / "merged_hf")
  cli.main(["merge", f"--base={tmp_path / 'base'}", "--models", str(tmp_path / "a"),
            str(tmp_path / "b"), "--method=lines", "--lines_alpha=0.3", "--lines_beta=0.6",
            f"--out_hf={out_hf}", f"--out={tmp_path / 'merged'}"])
  flats = [_flat(hf.load(str(tmp_path / n))) for n in ("base", "a", "b")]
  scales = methods.lines_scales({k: v.shape for k, v in flats[0].items()}, 0.3, 0.6)
  assert scales["encoder_layers/2/mlp/wo"] == np.float32(0.9)  # encoder: 3 layers
  assert scales["decoder_layers/1/mlp/wo"] == np.float32(0.9)  # decoder: 2 layers
  assert scales["encoder_layers/1/mlp/wo"] == np.float32(0.6)
  assert scales["token_embed/embedding"] == np.float32(0.3)
  got = _flat(store.load_any(str(tmp_path / "merged")))
  for k, b in flats[0].items():
    want = b + scales[k] * ((flats[1][k] - b) + (flats[2][k] - b))
    np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=k)
  recipe = json.load(open(os.path.join(out_hf, "mtjax_merge.json")))
  assert recipe["method"]["lines"]["stacks"]["decoder_layers"] == pytest.approx([0.3, 0.9])
  model = store.load_any(str(tmp_path / "merged"))
  ours = np.asarray(model({"encoder_input_tokens": ENC, "decoder_input_tokens": DEC}))
  reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out_hf).eval()
  with torch.no_grad():
    theirs = reloaded(input_ids=torch.tensor(ENC), attention_mask=torch.tensor(ENC > 0),
                      decoder_input_ids=torch.tensor(DEC)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_mismatched_inputs_name_the_first_differing_parameter(tmp_path, capsys):
  base = _t5(str(tmp_path / "base"), 0)
  _t5(str(tmp_path / "wide"), 1, d_ff=64)
  with pytest.raises(SystemExit) as e:
    cli.main(["merge", f"--base={tmp_path / 'base'}", "--models", str(tmp_path / "wide"),
              f"--out={tmp_path / 'out'}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  line = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(line) == 1, err
  # decoder_layers/0/mlp/wi_0 is the first path (sorted) whose shape differs.
  assert "parameter decoder_layers/0/mlp/wi_0 is (32, 48) in the base" in line[0]
  assert "(32, 64) there" in line[0]
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(SystemExit):
    cli.main(["merge", f"--base={tmp_path / 'base'}", "--models", str(tmp_path / "base"),
              "--method=dare", "--drop=1.5", f"--out={tmp_path / 'out'}"])
  assert "--drop 1.5" in capsys.readouterr().err
  del base
