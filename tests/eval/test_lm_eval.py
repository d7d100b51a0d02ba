"""lm-evaluation-harness backend (`mtjax.eval.lm_eval`): each request type equals transformers
on the same Hugging Face checkpoint (tiny random Llama and T5 with real tokenizers, tokenized by
lm-eval's own TemplateLM rules), batch size and length buckets do not change a score, local task
YAMLs run offline through `mtjax lm-eval` with metrics that follow from the logged requests, and
the `eval.lm_eval_*` training hook logs what the command computes on the saved step."""

import json
import math
import os

import jax
import numpy as np
import pytest

import torch  # (the test extra installs torch, transformers and lm-eval)
import transformers  # noqa: E402

from lm_eval import utils as lm_utils  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402

from mtjax import cli  # noqa: E402
from mtjax.config import schema  # noqa: E402
from mtjax.eval import infer, lm_eval  # noqa: E402
from tests.data import tokenizer_files  # noqa: E402

MAX_LENGTH = 64  # the checkpoints' n_positions / max_position_embeddings: lm-eval's max_length
REQUESTS = [  # (context, continuation): lm-eval's splits, empty and space-ending contexts too
    ("The cat sat on the", " mat."),
    ("Question: Is the sky blue? Answer:", " yes"),
    ("", "Dogs don't like thunderstorms."),
    ("Water boils at 100 ", "degrees"),
    (" ".join(tokenizer_files.SENTENCES[:5]), " The end."),  # longer than MAX_LENGTH: cut left
]
# A multiple-choice question's requests share their context: run once (prefix_sharing).
CHOICES = [("Question: Is the sky blue? Answer:", c) for c in (" no", " yes, on a clear day", " it")]
CONTEXTS = ["The cat sat on the", "Question: Is the sky blue? Answer:", "Zürich, São Paulo"]


def _llama(path: str) -> str:
  tokenizer_files.llama3(path)
  tok = tokenizer_files.reference(path)
  config = transformers.LlamaConfig(
      vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
      max_position_embeddings=MAX_LENGTH, bos_token_id=tok.bos_token_id,
      eos_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.3)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return _llama(str(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("t5"))
  tokenizer_files.t5(path)
  config = transformers.T5Config(
      vocab_size=200, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, dropout_rate=0.0, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1, n_positions=MAX_LENGTH, initializer_factor=2.0)
  torch.manual_seed(0)
  transformers.AutoModelForSeq2SeqLM.from_config(config).save_pretrained(path)
  return path


class Reference(TemplateLM):
  """transformers on the checkpoint, behind lm-eval's TemplateLM (its tokenization rules, the
  tokenizer's own special tokens): the independent reference."""

  def __init__(self, path: str, backend: str):
    super().__init__()
    self.backend = backend
    self.tok = tokenizer_files.reference(path)
    auto = (transformers.AutoModelForCausalLM if backend == "causal"
            else transformers.AutoModelForSeq2SeqLM)
    self.model = auto.from_pretrained(path).eval()

  @property
  def eot_token_id(self):
    return self.tok.eos_token_id

  @property
  def prefix_token_id(self):
    bos = self.tok.bos_token_id
    return self.tok.eos_token_id if bos is None else bos

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    return self.tok.encode(string, add_special_tokens=add_special_tokens is not False)

  def _loglikelihood_tokens(self, requests, **kwargs):
    return [self.score(context, continuation) for _, context, continuation in requests]

  def score(self, context, continuation, max_length=MAX_LENGTH):
    with torch.no_grad():
      if self.backend == "causal":
        seq = (list(context) + list(continuation))[-(max_length + 1):]
        logits = self.model(torch.tensor([seq[:-1]])).logits[0, -len(continuation):]
      else:
        logits = self.model(input_ids=torch.tensor([list(context)[-max_length:]]),
                            labels=torch.tensor([list(continuation)])).logits[0]
    target = torch.tensor(continuation)
    picked = torch.log_softmax(logits.float(), -1)[torch.arange(len(continuation)), target]
    return float(picked.sum()), bool((logits.argmax(-1) == target).all())

  def generate(self, context: str, max_new: int) -> str:
    ids = torch.tensor([self.tok_encode(context)])
    with torch.no_grad():
      out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new, pad_token_id=self.tok.eos_token_id)
    new = out[0, ids.shape[1]:] if self.backend == "causal" else out[0, 1:]
    return self.tok.decode(new, skip_special_tokens=True)

  # TemplateLM's abstract methods: this reference answers loglikelihood requests only (rolling
  # and generation are compared through `generate` and a hand sum above).
  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise NotImplementedError("the transformers reference scores loglikelihood requests only")

  def generate_until(self, requests, disable_tqdm=False):
    raise NotImplementedError("the transformers reference scores loglikelihood requests only")


def _instances(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _stop_requests(reference: Reference, max_new: int = 12):
  """generate_until requests whose stop string occurs in the greedy text, and what they must
  return (transformers' greedy text cut before it), plus one that runs to `max_gen_toks`."""
  requests, expected = [], []
  for context in CONTEXTS:
    full = reference.generate(context, max_new)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop, full
    requests.append((context, {"until": [stop], "max_gen_toks": max_new, "do_sample": False}))
    expected.append(full.split(stop)[0])
  requests.append((CONTEXTS[0], {"until": ["never there"], "max_gen_toks": 5}))
  expected.append(reference.generate(CONTEXTS[0], 5))
  return requests, expected


def _assert_loglikelihoods_equal(lm, reference, engine):
  """REQUESTS pair by pair, then with CHOICES (contexts shared: run once), equal to the
  reference's log-likelihoods and is_greedy."""
  for requests in (REQUESTS, REQUESTS + CHOICES):  # pair by pair; contexts shared
    ours = lm.loglikelihood(_instances("loglikelihood", requests))
    theirs = reference.loglikelihood(_instances("loglikelihood", requests))
    for (a, greedy_a), (b, greedy_b) in zip(ours, theirs):
      assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)
      assert greedy_a == greedy_b
  assert {op for op, _, _ in engine.shapes} == {"score", "score_shared"}


def test_decoder_requests_equal_transformers(llama_dir):
  model = infer.load(llama_dir)
  engine = lm_eval.Engine(model, batch_size=8)
  lm, reference = lm_eval.harness_lm(engine), Reference(llama_dir, "causal")
  assert engine.max_length == MAX_LENGTH and engine.prefix_id == reference.prefix_token_id

  _assert_loglikelihoods_equal(lm, reference, engine)

  # is_greedy: the model's own greedy continuation is, one changed token is not.
  context = reference.tok_encode(CONTEXTS[1])
  with torch.no_grad():
    greedy = reference.model.generate(torch.tensor([context]), do_sample=False, max_new_tokens=4,
                                      min_new_tokens=4)[0, len(context):].tolist()
  other = greedy[:-1] + [(greedy[-1] + 1) % 300]
  (lp_greedy, is_greedy), (lp_other, not_greedy) = engine.score([(context, greedy),
                                                                 (context, other)])
  assert is_greedy and not not_greedy
  assert abs(lp_greedy - reference.score(context, greedy)[0]) < 1e-4

  # generate_until: transformers' greedy text cut before the stop string; max_gen_toks honoured.
  requests, expected = _stop_requests(reference)
  assert lm.generate_until(_instances("generate_until", requests)) == expected

  # loglikelihood_rolling: lm-eval's windows (here of 16 tokens), summed by hand.
  short = lm_eval.harness_lm(lm_eval.Engine(model, batch_size=8, max_length=16))
  text = " ".join(tokenizer_files.SENTENCES[1:4])
  tokens = reference.tok_encode(text, add_special_tokens=False)
  windows = list(lm_utils.get_rolling_token_windows(tokens, reference.prefix_token_id, 16, 1))
  assert len(windows) >= 3 and sum(len(p) for _, p in windows) == len(tokens)
  expected_total = 0.0
  for inputs, predicted in windows:  # each window: score its last len(predicted) tokens
    with torch.no_grad():
      logits = reference.model(torch.tensor([inputs])).logits[0, -len(predicted):]
    expected_total += float(torch.log_softmax(logits, -1)[torch.arange(len(predicted)),
                                                        torch.tensor(predicted)].sum())
  (total,) = short.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
  assert abs(total - expected_total) <= 1e-4 * abs(expected_total)


def test_t5_requests_equal_transformers(t5_dir):
  model = infer.load(t5_dir)
  engine = lm_eval.Engine(model, batch_size=8)
  lm, reference = lm_eval.harness_lm(engine), Reference(t5_dir, "seq2seq")
  assert engine.backend == "seq2seq" and engine.prefix_id == reference.prefix_token_id == 1
  assert engine.max_length == MAX_LENGTH  # the encoder input of REQUESTS[-1] is cut to it
  _assert_loglikelihoods_equal(lm, reference, engine)
  requests, expected = _stop_requests(reference)
  assert lm.generate_until(_instances("generate_until", requests)) == expected


def test_batch_size_and_buckets_do_not_change_scores(llama_dir):
  """One row a batch on one device vs 16-row batches over 8 devices, requests in three length
  buckets: the same scores, one compiled program per bucket, results in request order."""
  reference = Reference(llama_dir, "causal")
  pairs = []
  for i, sentence in enumerate(tokenizer_files.SENTENCES[:10]):
    tokens = reference.tok_encode(sentence)
    pairs.append((tokens[:len(tokens) // 2 + i % 3], tokens[len(tokens) // 2 + i % 3:]))
  one = lm_eval.Engine(infer.load(llama_dir, mesh_shape=(1, 1, 1),
                                  devices=jax.local_devices()[:1]), batch_size=1)
  many = lm_eval.Engine(infer.load(llama_dir), batch_size=16)
  a, b = one.score(pairs), many.score(pairs)
  np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-5, atol=1e-5)
  assert [g for _, g in a] == [g for _, g in b]
  for (lp, _), (context, continuation) in zip(b, pairs):
    assert abs(lp - reference.score(context, continuation)[0]) <= 1e-4 * max(1.0, abs(lp))
  buckets = {lm_eval.bucket(len(c) + len(t) - 1, MAX_LENGTH) for c, t in pairs}
  assert len(buckets) == 3 and many.batch_size == 16
  assert len(many.shapes) == len(buckets) and len(one.shapes) == len(buckets)


def _tasks(folder) -> str:
  """Three local tasks (multiple choice, generate_until, loglikelihood_rolling) over JSONL rows;
  `datasets` caches under the folder, never in the home directory."""
  folder.mkdir()
  data = {
      "mc": [{"question": "The cat sat on the", "choices": ["mat.", "guitar.", "bridge."],
              "label": 0},
             {"question": "Water boils at 100", "choices": ["degrees.", "cities."], "label": 0},
             {"question": "Is the sky blue? Answer:", "choices": ["yes", "no"], "label": 0},
             {"question": "Dogs don't like", "choices": ["thunderstorms.", "Paris."],
              "label": 1}],
      "gen": [{"question": "The cat sat on the", "answer": "mat"},
              {"question": "The committee approved the", "answer": "budget"}],
      "ppl": [{"text": "The cat sat on the mat. A man is playing a guitar on stage."},
              {"text": "Water boils at 100 degrees Celsius at sea level."}],
  }
  for name, records in data.items():
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  head = ("dataset_path: json\ndataset_kwargs:\n  data_files: {{test: {data}}}\n"
          "  cache_dir: {cache}\ntest_split: test\nfewshot_split: test\n")
  bodies = {
      "mc": ("output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
             "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
             "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"),
      "gen": ("output_type: generate_until\ndoc_to_text: \"{{question}}\"\n"
              "doc_to_target: \" {{answer}}\"\n"
              "generation_kwargs: {until: [\"e\"], max_gen_toks: 6, do_sample: false}\n"
              "metric_list:\n  - metric: exact_match\n"),
      "ppl": ("output_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
              "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n"
              "  - metric: bits_per_byte\n"),
  }
  for name, body in bodies.items():
    (folder / f"tiny_{name}.yaml").write_text(
        f"task: tiny_{name}\n" + head.format(data=folder / f"{name}.jsonl",
                                             cache=folder / "hf_cache") + body)
  return str(folder)


def _read(folder, name):
  with open(os.path.join(folder, "lm_eval", f"{name}.json")) as f:
    results = json.load(f)
  with open(os.path.join(folder, "lm_eval", f"{name}.samples.jsonl")) as f:
    samples = [json.loads(line) for line in f]
  return results, samples


def test_cli_runs_local_tasks_and_their_metrics_follow_from_the_requests(llama_dir, tmp_path,
                                                                        capsys):
  tasks = _tasks(tmp_path / "tasks")
  out = tmp_path / "out"
  cli.main(["lm-eval", "--checkpoint", llama_dir, "--tasks", "tiny_mc,tiny_gen,tiny_ppl",
            "--include_path", tasks, "--num_fewshot", "1", "--output", str(out),
            "--batch_size", "8"])
  printed = capsys.readouterr().out
  summary = json.loads(printed.strip().splitlines()[-1])
  assert "|tiny_mc " in printed and "acc_norm" in printed  # lm-eval's table
  results, samples = _read(out, os.path.basename(llama_dir))
  assert summary["output"] == str(out / "lm_eval" / f"{os.path.basename(llama_dir)}.json")
  assert summary["metrics"]["lm_eval/tiny_mc/acc"] == results["results"]["tiny_mc"]["acc,none"]
  assert results["n-shot"]["tiny_mc"] == 1 and results["config"]["bootstrap_iters"] == 0
  reference = Reference(llama_dir, "causal")

  # Multiple choice: every choice's log-likelihood (1-shot prompts) is transformers', and acc /
  # acc_norm are the argmax of those numbers (per choice character for acc_norm).
  mc = [s for s in samples if s["task"] == "tiny_mc"]
  hits, hits_norm = [], []
  for s in mc:
    scores = [lp for lp, _ in s["filtered_resps"]]
    expected = reference.loglikelihood(_instances("loglikelihood",
                                                  [tuple(a) for a in s["arguments"]]))
    np.testing.assert_allclose(scores, [lp for lp, _ in expected], rtol=1e-5, atol=1e-4)
    lengths = [len(c) for c in s["doc"]["choices"]]
    hits.append(int(np.argmax(scores)) == s["target"])
    hits_norm.append(int(np.argmax(np.asarray(scores) / lengths)) == s["target"])
  assert len(mc) == 4
  assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(np.mean(hits))
  assert results["results"]["tiny_mc"]["acc_norm,none"] == pytest.approx(np.mean(hits_norm))

  # generate_until: transformers' greedy text (6 tokens), cut before the task's stop string.
  for s in (s for s in samples if s["task"] == "tiny_gen"):
    context, kwargs = s["arguments"][0]
    assert s["filtered_resps"][0] == reference.generate(context, 6).split("e")[0]

  # loglikelihood_rolling: the word perplexity of the summed per-document log-likelihoods.
  ppl = [s for s in samples if s["task"] == "tiny_ppl"]
  words = sum(len(s["doc"]["text"].split()) for s in ppl)
  total = sum(s["filtered_resps"][0] for s in ppl)
  assert results["results"]["tiny_ppl"]["word_perplexity,none"] == pytest.approx(
      math.exp(-total / words))


def test_training_hook_logs_what_the_command_computes(tmp_path, synthetic_cache, capsys):
  """A decoder run with `eval.lm_eval_*`: lm-eval every step (results, metrics rows, trackers);
  `mtjax lm-eval` on the saved step gives the hook's numbers."""
  from mtjax.recipes import train as train_recipe

  tasks = _tasks(tmp_path / "tasks")
  cfg = schema.RunConfig(
      run_dir=str(tmp_path / "run"),
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=synthetic_cache,
                             inputs_length=48, targets_length=16, batch_size=8,
                             feature_converter="decoder_only"),
      model=schema.ModelConfig(preset="decoder_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=2, log_every=1, checkpoint_every=2),
      eval=schema.EvalConfig(at_end=False, lm_eval_tasks=("tiny_mc", "tiny_ppl"),
                             lm_eval_every=1, lm_eval_num_fewshot=1, lm_eval_include_path=tasks,
                             lm_eval_batch_size=8, lm_eval_limit=3),
      mesh=schema.MeshConfig(data=8))
  train_recipe.run(cfg, progress=False)
  with open(os.path.join(cfg.run_dir, "eval_metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [r["step"] for r in logged] == [1, 2]
  assert all("lm_eval/tiny_mc/acc" in r and "lm_eval/tiny_ppl/word_perplexity" in r
             for r in logged)
  assert os.path.isdir(os.path.join(cfg.run_dir, "tensorboard"))
  hook, _ = _read(cfg.run_dir, "2")
  assert hook["n-samples"]["tiny_mc"] == {"original": 4, "effective": 3}
  capsys.readouterr()

  out = tmp_path / "cli"
  cli.main(["lm-eval", "--checkpoint", cfg.run_dir, "--tasks", "tiny_mc,tiny_ppl",
            "--include_path", tasks, "--num_fewshot", "1", "--output", str(out),
            "--batch_size", "8", "--limit", "3"])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  command, _ = _read(out, "2")
  assert summary["step"] == 2
  for task in ("tiny_mc", "tiny_ppl"):
    for key, value in hook["results"][task].items():
      if isinstance(value, float):
        assert command["results"][task][key] == pytest.approx(value, rel=1e-5), (task, key)
  assert summary["metrics"]["lm_eval/tiny_mc/acc"] == pytest.approx(logged[1][
      "lm_eval/tiny_mc/acc"])


def test_two_processes_follow_process_0(llama_dir, tmp_path):
  """Parameters sharded over two processes' devices: process 0 runs the harness and process 1
  runs each batch it broadcasts; both end with process 0's numbers, which are one process's."""
  from tests import two_processes  # pylint: disable=g-import-not-at-top

  tasks = _tasks(tmp_path / "tasks")
  out = str(tmp_path / "rows")
  two_processes.run(os.path.join(os.path.dirname(__file__), "lm_eval_two_hosts_worker.py"),
                    llama_dir, tasks, out)
  got = []
  for pid in range(2):
    with open(f"{out}.{pid}.json") as f:
      got.append(json.load(f))
  assert got[0]["rows"] == got[1]["rows"] and got[0]["shapes"] == got[1]["shapes"] > 0
  single = lm_eval.rows(lm_eval.evaluate(infer.load(llama_dir), ["tiny_mc", "tiny_gen",
                                                                 "tiny_ppl"],
                                         num_fewshot=1, include_path=tasks, batch_size=4))
  assert [r["task"] for r in got[0]["rows"]] == [r["task"] for r in single]
  for a, b in zip(got[0]["rows"], single):
    assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5), a["task"]
