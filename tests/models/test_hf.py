"""HF interop: tiny random `transformers` models -> mtjax logits equal to torch's (1e-4, fp32),
with and without padding; export -> `transformers.from_pretrained` -> the same logits again."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mtjax.models import decoder, hf, t5

ATOL = 1e-4


def _t5_v1_0():
  return transformers.T5Config(
      vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
      num_decoder_layers=3, feed_forward_proj="relu", tie_word_embeddings=True,
      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)


def _t5_v1_1():
  return transformers.T5Config(
      vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)


def _mt5():
  return transformers.MT5Config(
      vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)


def _llama():
  return transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
      rope_theta=500.0, tie_word_embeddings=False)


def _qwen2():
  return transformers.Qwen2Config(
      vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _gemma():
  return transformers.GemmaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=1, head_dim=16,
      hidden_activation="gelu_pytorch_tanh")


CONFIGS = {"t5_v1_0": _t5_v1_0, "t5_v1_1": _t5_v1_1, "mt5": _mt5, "llama_gqa": _llama,
           "qwen2": _qwen2, "gemma": _gemma}


def _torch_model(name):
  config = CONFIGS[name]()
  torch.manual_seed(len(name))
  if name.startswith(("t5", "mt5")):
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    if name != "t5_v1_0":  # v1.1 / mT5: a head of its own
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
  else:
    model = transformers.AutoModelForCausalLM.from_config(config)
  with torch.no_grad():  # norms and biases away from their init, so their mapping is tested
    for key, p in model.named_parameters():
      if "norm" in key or key.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
  name = request.param
  model = _torch_model(name)
  path = str(tmp_path_factory.mktemp(name))
  model.save_pretrained(path)
  return name, model, path, hf.load(path)


# Padded: the second row is shorter. Unpadded: the same shapes, every position real (one
# compilation serves both).
ENC = np.array([[5, 6, 7, 8, 9, 10, 1], [11, 12, 1, 0, 0, 0, 0]], np.int32)
DEC = np.array([[0, 3, 4, 5, 6], [0, 7, 8, 0, 0]], np.int32)
TOKENS = np.array([[3, 5, 7, 9, 11, 13, 15], [4, 6, 8, 10, 0, 0, 0]], np.int32)
FULL = {"enc": np.array([[5, 6, 7, 8, 9, 10, 1], [11, 12, 13, 14, 15, 16, 1]], np.int32),
        "dec": np.array([[0, 3, 4, 5, 6], [0, 7, 8, 9, 10]], np.int32),
        "tokens": np.array([[3, 5, 7, 9, 11, 13, 15], [4, 6, 8, 10, 12, 14, 16]], np.int32)}


def _inputs(padded: bool):
  """(enc, dec, dec_mask, tokens, mask) for the padded or the unpadded batch."""
  if not padded:
    return (FULL["enc"], FULL["dec"], np.ones((2, 5), np.int32), FULL["tokens"],
            np.ones((2, 7), np.int32))
  dec_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  mask = (np.arange(7)[None] < np.array([[7], [4]])).astype(np.int32)
  return ENC, DEC, dec_mask, TOKENS, mask


def _torch_logits(name, model, padded: bool):
  enc, dec, dec_mask, tokens, mask = _inputs(padded)
  with torch.no_grad():
    if name.startswith(("t5", "mt5")):
      return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                   decoder_input_ids=torch.tensor(dec),
                   decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


@nnx.jit
def forward(model, batch):
  return model(batch)


def _mtjax_logits(name, model, padded: bool):
  enc, dec, _, tokens, _ = _inputs(padded)
  if name.startswith(("t5", "mt5")):
    return np.asarray(forward(model, {"encoder_input_tokens": enc, "decoder_input_tokens": dec}))
  return np.asarray(forward(model, {"decoder_input_tokens": tokens}))


def _assert_close_on_real_tokens(name, got, want, padded=True):
  _, _, dec_mask, _, mask = _inputs(padded)
  mask = (dec_mask if name.startswith(("t5", "mt5")) else mask).astype(bool)
  assert got.shape == want.shape
  np.testing.assert_allclose(got[mask], want[mask], atol=ATOL, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_loaded_model_matches_transformers_logits(saved, padded):
  name, torch_model, _, model = saved
  _assert_close_on_real_tokens(name, _mtjax_logits(name, model, padded),
                               _torch_logits(name, torch_model, padded), padded)


def test_loaded_config_has_the_family_options(saved):
  name, _, _, model = saved
  cfg = model.cfg
  if name == "t5_v1_0":
    assert cfg.feed_forward == "relu" and cfg.tie_word_embeddings
  elif name in ("t5_v1_1", "mt5"):
    assert cfg.feed_forward == "gated-gelu" and not cfg.tie_word_embeddings
  elif name == "llama_gqa":
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta) == (4, 2, 500.0)
  elif name == "qwen2":
    assert cfg.qkv_bias and cfg.num_kv_heads == 1
  elif name == "gemma":
    assert cfg.scale_embeddings and cfg.norm_plus_one and cfg.tie_word_embeddings
    assert cfg.activation == "gelu_tanh"


def test_export_round_trips_through_transformers(saved, tmp_path):
  name, torch_model, _, model = saved
  hf.export(model, str(tmp_path))
  auto = (transformers.AutoModelForSeq2SeqLM if name.startswith(("t5", "mt5"))
          else transformers.AutoModelForCausalLM)
  reloaded = auto.from_pretrained(str(tmp_path)).eval()
  _assert_close_on_real_tokens(name, _torch_logits(name, reloaded, True),
                               _torch_logits(name, torch_model, True))
  # and back into mtjax: identical parameters
  again = hf.load(str(tmp_path))
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_checkpoint_loads_onto_a_mesh(tmp_path):
  from mtjax.parallel import mesh as mesh_lib
  from mtjax.parallel import rules as rules_lib
  torch_model = _torch_model("llama_gqa")
  torch_model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  mesh = mesh_lib.make_mesh(2, 2, 2)
  model = hf.load(str(tmp_path), mesh=mesh)
  query = model.layers[0].attention.query[...]
  spec = rules_lib.logical_to_spec(("embed", "heads", "kv"), rules_lib.DEFAULT_RULES)
  assert query.sharding.spec == spec and len(query.sharding.device_set) == 8
  with jax.set_mesh(mesh):
    got = _mtjax_logits("llama_gqa", model, True)
  _assert_close_on_real_tokens("llama_gqa", got, _torch_logits("llama_gqa", torch_model, True))


def test_unknown_key_is_named(tmp_path):
  from safetensors.numpy import save_file
  cfg = hf.config_to_hf(decoder.preset("decoder_test"))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(cfg, f)
  save_file({"model.layers.0.self_attn.q_norm.weight": np.zeros(8, np.float32)},
            str(tmp_path / "model.safetensors"))
  with pytest.raises(KeyError, match="q_norm"):
    hf.load(str(tmp_path))


def test_t5_preset_exports_the_v1_0_tie(tmp_path):
  cfg = hf.config_to_hf(t5.preset("t5_test", tie_word_embeddings=True, feed_forward="relu"))
  assert cfg["tie_word_embeddings"] and cfg["feed_forward_proj"] == "relu"


def test_scanned_layers_load_match_and_export(tmp_path):
  torch_model = _torch_model("llama_gqa")
  torch_model.save_pretrained(str(tmp_path / "hf"))
  model = hf.load(str(tmp_path / "hf"), scan_layers=True)
  assert model.layers.mlp.up[...].shape == (2, 32, 48)  # [layers, embed, mlp]
  _assert_close_on_real_tokens("llama_gqa", _mtjax_logits("llama_gqa", model, True),
                               _torch_logits("llama_gqa", torch_model, True))
  hf.export(model, str(tmp_path / "back"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).eval()
  _assert_close_on_real_tokens("llama_gqa", _torch_logits("llama_gqa", reloaded, True),
                               _torch_logits("llama_gqa", torch_model, True))


def test_llama3_rope_scaling_matches_transformers():
  from transformers.modeling_rope_utils import _compute_llama3_parameters
  config = transformers.LlamaConfig(
      vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=1,
      num_attention_heads=2, head_dim=32,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
  _, cfg = hf.config_from_hf(config.to_dict())
  assert cfg.rope_llama3_scaling == (32.0, 1.0, 4.0, 8192)
  want = _compute_llama3_parameters(config)[0].numpy()
  np.testing.assert_allclose(np.asarray(decoder.rope_frequencies(cfg)), want, rtol=1e-6)
  assert hf.config_from_hf(hf.config_to_hf(cfg))[1] == cfg


def test_lora_on_a_hf_checkpoint_starts_at_its_logits_and_exports_merged(tmp_path):
  """Adapters on a HF checkpoint start at zero (same logits as transformers); once trained,
  export folds them into the kernels, and transformers then computes the adapted model."""
  from mtjax.peft import lora
  torch_model = _torch_model("llama_gqa")
  torch_model.save_pretrained(str(tmp_path / "hf"))
  model = hf.load(str(tmp_path / "hf"), lora_rank=2,
                  lora_targets=("query", "value", "out", "down"))
  assert model.layers[0].attention.query_lora.b[...].shape == (2, 4, 8)  # [rank, heads, kv]
  _assert_close_on_real_tokens("llama_gqa", _mtjax_logits("llama_gqa", model, True),
                               _torch_logits("llama_gqa", torch_model, True))
  rng = np.random.default_rng(0)
  for path, var in nnx.state(model, nnx.Param).flat_state():
    if lora.is_adapter_path("/".join(map(str, path))) and str(path[-1]) == "b":
      var.set_value(rng.normal(0, 0.5, var.get_value().shape).astype(np.float32))
  adapted = _mtjax_logits("llama_gqa", model, True)
  hf.export(model, str(tmp_path / "merged"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  merged = _torch_logits("llama_gqa", reloaded, True)
  assert np.abs(merged - _torch_logits("llama_gqa", torch_model, True)).max() > 1e-2
  _assert_close_on_real_tokens("llama_gqa", adapted, merged)
