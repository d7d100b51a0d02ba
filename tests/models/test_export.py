"""`mtjax export` writes a HF model dir transformers generates with as the run trained: the run's
special ids and the source's lengths in config.json, a generation_config.json that stops at the
run's EOS, the tokenizer files; `generate()` on the export equals mtjax's greedy decode."""

import json
import os
import shutil
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mtjax import cli  # noqa: E402
from mtjax.config import schema  # noqa: E402
from mtjax.eval import generate  # noqa: E402
from mtjax.models import hf_meta, registry, store  # noqa: E402
from mtjax.recipes import train as train_recipe  # noqa: E402

MAX_NEW = 8  # targets_length of the runs below
STEPS = 15  # enough for the tiny decoder to end its answers with EOS
# Untrained t5_test (seed 2) with its EOS logit doubled: greedy decoding ends at EOS after 0 to
# 3 tokens depending on the prompt.
T5_SEED, EOS_BOOST = 2, 2.0
# The source's own ids and length: none of them is what a byte-vocabulary run trains with.
SOURCE_IDS = {"bos_token_id": 300, "eos_token_id": [301, 302], "max_position_embeddings": 4096}


def _source_llama(path: str) -> None:
  """A tiny random Llama with Llama-3-like special ids and a sampling generation config."""
  config = transformers.LlamaConfig(
      vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
      **SOURCE_IDS)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
  transformers.GenerationConfig(bos_token_id=300, eos_token_id=[301, 302], do_sample=True,
                                temperature=0.6, top_p=0.9).save_pretrained(path)


def _prompts(n: int) -> list[list[int]]:
  """Validation prompts of the task the runs train on, as the task encodes them (bytes + EOS)."""
  from mtjax.mixtures import synthetic

  rows = synthetic.generate("compare", "validation")[:n]
  return [list(synthetic.VOCAB.encode(f"Is {r['a']} greater than {r['b']}?")) + [1]
          for r in rows]


def _mtjax_greedy(model, family: str, prompts, eos: int) -> list[list[int]]:
  """mtjax's own greedy decode, each row cut after its first EOS."""
  graphdef, state = nnx.split(model)
  width = max(map(len, prompts))
  tokens = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    tokens[row, :len(p)] = p
  batch = generate.prompt_batch("enc_dec" if family == "t5" else "decoder_only", tokens)
  options = generate.DecodeOptions(method="greedy", max_length=MAX_NEW, eos_id=eos)
  out, _ = generate.generate(graphdef, state.to_pure_dict(), batch, jax.random.key(0),
                             options=options)
  return [_through_eos(list(map(int, row)), eos) for row in np.asarray(out)]


def _through_eos(tokens: list[int], eos: int) -> list[int]:
  return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def _run(tmp_path, cache_dir, name: str, **model) -> schema.RunConfig:
  return schema.RunConfig(
      run_dir=str(tmp_path / name),
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=cache_dir, inputs_length=32,
                             targets_length=MAX_NEW, batch_size=16,
                             feature_converter="enc_dec" if "preset" in model
                             else "decoder_only"),
      model=schema.ModelConfig(**model),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=STEPS, log_every=STEPS, checkpoint_every=STEPS),
      eval=schema.EvalConfig(at_end=False), mesh=schema.MeshConfig(data=8))


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, synthetic_cache):
  """A tiny Llama (model.hf_checkpoint) finetuned on synthetic_compare (ByteVocabulary)."""
  tmp = tmp_path_factory.mktemp("llama_run")
  _source_llama(str(tmp / "source"))
  cfg = _run(tmp, synthetic_cache, "run", hf_checkpoint=str(tmp / "source"))
  train_recipe.run(cfg, progress=False)
  return cfg


def test_decoder_run_exports_its_ids_and_generates_as_mtjax_decodes(llama_run, tmp_path):
  cfg = llama_run
  recorded = json.load(open(os.path.join(cfg.run_dir, "hf", "export.json")))
  assert recorded["vocabulary"]["eos_id"] == 1 and recorded["vocabulary"]["pad_id"] == 0
  step_dir = os.path.join(cfg.run_dir, "checkpoints", str(STEPS))
  out = str(tmp_path / "hf")
  cli.main(["export", f"--checkpoint={step_dir}", f"--out={out}"])

  config = json.load(open(os.path.join(out, "config.json")))
  # The run's byte vocabulary (eos 1, pad 0; rows start at 0), the source's length.
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 1, 0)
  assert config["max_position_embeddings"] == 4096
  assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "float32"
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  assert (generation["bos_token_id"], generation["eos_token_id"]) == (0, 1)
  assert generation["pad_token_id"] == 0
  assert generation["do_sample"] and generation["temperature"] == 0.6  # the source's, kept
  assert generation["max_length"] == 1 + 32 + MAX_NEW  # start + inputs + targets

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert reloaded.config.eos_token_id == 1 and reloaded.generation_config.eos_token_id == 1
  assert reloaded.config.max_position_embeddings == 4096

  prompts = _prompts(6)
  ours = _mtjax_greedy(store.load_any(step_dir), "decoder", prompts, eos=1)
  assert any(row[-1] == 1 and len(row) < MAX_NEW for row in ours), ours  # EOS is reached
  for prompt, expected in zip(prompts, ours):
    ids = torch.tensor([[config["bos_token_id"], *prompt]])
    with torch.no_grad():
      got = reloaded.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=MAX_NEW)
    assert got[0, ids.shape[1]:].tolist() == expected  # stops right after the EOS


def test_a_run_dir_recorded_before_export_metadata_exports_the_same(llama_run, tmp_path):
  """No `hf/` folder (a run from before it existed): config.json, model_summary.json and the
  cache manifests say the same."""
  run_dir = str(tmp_path / "old_run")
  shutil.copytree(llama_run.run_dir, run_dir)
  shutil.rmtree(os.path.join(run_dir, "hf"))
  cli.main(["export", f"--checkpoint={llama_run.run_dir}", f"--out={tmp_path / 'new'}"])
  cli.main(["export", f"--checkpoint={run_dir}", f"--out={tmp_path / 'old'}"])
  for name in ("config.json", "generation_config.json"):
    assert (json.load(open(tmp_path / "old" / name)) == json.load(open(tmp_path / "new" / name)))


def _write_run(cfg: schema.RunConfig, model) -> None:
  """A run dir as the trainer leaves it (config.json, checkpoints/1/params), without training."""
  os.makedirs(cfg.run_dir)
  with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
    json.dump(schema.to_dict(cfg), f)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(cfg.run_dir, "checkpoints", "1", "params"),
                    nnx.state(model).to_pure_dict())
  checkpointer.wait_until_finished()


def test_t5_run_exports_decoder_start_and_generates_as_mtjax_decodes(synthetic_cache, tmp_path):
  """A t5_test run dir without `hf/` (ids from its cache manifest). Untrained weights with the
  EOS logit scaled up, so that greedy decoding ends at EOS after a few tokens."""
  cfg = _run(tmp_path, synthetic_cache, "t5", preset="t5_test")
  model = registry.create(cfg.model, seed=T5_SEED)
  model.lm_head.set_value(model.lm_head.get_value().at[:, 1].multiply(EOS_BOOST))
  _write_run(cfg, model)
  out = str(tmp_path / "hf")
  cli.main(["export", f"--checkpoint={cfg.run_dir}", f"--out={out}"])
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  assert generation["decoder_start_token_id"] == 0 and generation["eos_token_id"] == 1
  assert generation["pad_token_id"] == 0 and generation["max_length"] == 1 + MAX_NEW
  reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  assert reloaded.config.decoder_start_token_id == 0 and reloaded.config.pad_token_id == 0

  prompts = _prompts(6)
  ours = _mtjax_greedy(store.load_any(cfg.run_dir), "t5", prompts, eos=1)
  assert any(row[-1] == 1 and 1 < len(row) < MAX_NEW for row in ours), ours  # EOS is reached
  for prompt, expected in zip(prompts, ours):
    ids = torch.tensor([prompt])
    with torch.no_grad():
      got = reloaded.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=MAX_NEW)
    assert got[0, 0] == 0 and got[0, 1:].tolist() == expected  # starts at 0, stops at EOS


def _tokenizer_dir(path: str) -> dict[str, int]:
  """A Llama 3 Instruct-like tokenizer (tokenizers library; specials after the words, eos
  `<|eot_id|>`, generation config end ids [end_of_text, eot], no pad) saved as transformers
  saves one; returns the special tokens' ids."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  words = ["<unk>", "hello", "world", "yes", "no"]
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0],
                                              eos_token="<|eot_id|>", unk_token="<unk>")
  fast.save_pretrained(path)
  ids = {t: tok.token_to_id(t) for t in specials}
  transformers.GenerationConfig(
      bos_token_id=ids["<|begin_of_text|>"],
      eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]]).save_pretrained(path)
  return ids


def test_a_run_with_an_hf_tokenizer_exports_its_ids_and_files(tmp_path):
  """Tasks whose vocabulary is an HF tokenizer (Llama 3 Instruct-like): its BOS, its EOS with the
  other end id of its generation config, and its files; the tokenizer's own pad being none,
  padding is EOS (as transformers pads then)."""
  seqio = pytest.importorskip("seqio")
  from mtjax.data import hf_vocab

  tok_dir = str(tmp_path / "tok")
  ids = _tokenizer_dir(tok_dir)
  vocab = hf_vocab.HFVocabulary.from_dir(tok_dir)
  name = "test_export_hf_tokenizer_task"
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(lambda split, shuffle_files=False, seed=None: None,
                                            splits=["train"]),
      output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
  cfg = schema.RunConfig(
      run_dir=str(tmp_path / "run"),
      data=schema.DataConfig(mixture=name, tokenizer=tok_dir, feature_converter="decoder_only"),
      model=schema.ModelConfig(preset="decoder_test"))
  try:
    _write_run(cfg, registry.create(cfg.model, seed=0))
    setup = types.SimpleNamespace(cfg=cfg, spec=types.SimpleNamespace(task_names=(name,)),
                                  model_cfg=registry.architecture(cfg.model))
    hf_meta.record(setup, cfg.run_dir)
    hf_meta.record(setup, cfg.run_dir)  # a resume records the same again
  finally:
    seqio.TaskRegistry.remove(name)
  assert "tokenizer.json" in os.listdir(os.path.join(cfg.run_dir, "hf", "tokenizer"))
  out = str(tmp_path / "hf")
  cli.main(["export", f"--checkpoint={cfg.run_dir}", f"--out={out}"])
  eot, end = ids["<|eot_id|>"], ids["<|end_of_text|>"]
  config = json.load(open(os.path.join(out, "config.json")))
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  for entries in (config, generation):
    assert entries["bos_token_id"] == ids["<|begin_of_text|>"]
    assert entries["eos_token_id"] == [eot, end] and entries["pad_token_id"] == eot
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (ids["<|begin_of_text|>"], eot)
  text = "hello world yes"
  assert tokenizer(text, add_special_tokens=False)["input_ids"] == vocab.encode(text)
  assert transformers.AutoModelForCausalLM.from_pretrained(out).config.eos_token_id == [eot, end]


def test_convert_keeps_the_source_ids_generation_config_and_tokenizer(tmp_path, capsys):
  config = transformers.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=24,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                                    pad_token_id=0, max_position_embeddings=512)
  torch.manual_seed(0)
  source = str(tmp_path / "source")
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(source)
  _tokenizer_dir(source)
  transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                repetition_penalty=1.1).save_pretrained(source)
  cli.main(["convert", f"--hf_dir={source}", f"--out={tmp_path / 'mtjax'}"])
  cli.main(["export", f"--checkpoint={tmp_path / 'mtjax'}", f"--out={tmp_path / 'back'}"])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert "tokenizer.json" in printed["files"] and "generation_config.json" in printed["files"]
  back = str(tmp_path / "back")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(back)
  assert (reloaded.config.bos_token_id, reloaded.config.eos_token_id,
          reloaded.config.pad_token_id) == (1, 2, 0)
  assert reloaded.config.max_position_embeddings == 512
  assert reloaded.generation_config.repetition_penalty == 1.1
  assert reloaded.generation_config.eos_token_id == 2
  tokenizer, theirs = (transformers.AutoTokenizer.from_pretrained(d) for d in (back, source))
  assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (theirs.bos_token_id,
                                                              theirs.eos_token_id)
  assert tokenizer("hello world")["input_ids"] == theirs("hello world")["input_ids"]


def test_tokenizer_files_are_listed_and_missing_ones_never_fail(tmp_path):
  _tokenizer_dir(str(tmp_path / "tok"))
  (tmp_path / "tok" / "spiece.model").write_bytes(b"x")
  (tmp_path / "tok" / "README.md").write_text("not a tokenizer file")
  names = hf_meta.tokenizer_files(str(tmp_path / "tok"))
  assert "tokenizer.json" in names and "spiece.model" in names and "README.md" not in names
  assert hf_meta.tokenizer_files(str(tmp_path / "absent")) == []
  assert hf_meta.tokenizer_files("") == []
