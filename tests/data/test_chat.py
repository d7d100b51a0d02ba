"""The chat format renders as transformers' `apply_chat_template`, splits each record into prompt
and answer (the end-of-turn marker as EOS), and works as a file task's template."""

import json
import pickle

import pytest

from mtjax import errors
from mtjax.data import chat, hf_vocab
from tests.data import tokenizer_files

FAMILIES = ("llama3", "llama3_instruct", "qwen2", "gemma")
END_OF_TURN = {"llama3": "<|eot_id|>", "llama3_instruct": "<|eot_id|>", "qwen2": "<|im_end|>",
               "gemma": "<end_of_turn>"}
USER = "Premise: \"The Osbournes\" is a reality show.\nHypothesis: It's on TV — true?  "
ANSWER = " yes "


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat_tokenizers")
  return {
      "llama3": tokenizer_files.llama3(str(root / "llama3")),
      "llama3_instruct": tokenizer_files.llama3(str(root / "llama3_i"), instruct=True),
      "qwen2": tokenizer_files.qwen2(str(root / "qwen2")),
      "gemma": tokenizer_files.gemma(str(root / "gemma")),
  }


@pytest.fixture(scope="module")
def refs(dirs):
  return {name: tokenizer_files.reference(path) for name, path in dirs.items()}


def _ids(out):
  return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("family", FAMILIES)
def test_render_equals_apply_chat_template(dirs, refs, family):
  fmt = chat.ChatFormat(hf_vocab.HFVocabulary.from_dir(dirs[family]))
  ref = refs[family]
  conversations = [
      [{"role": "user", "content": USER}],
      [{"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}],
      [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
       {"role": "user", "content": "Ünïcödé 東京?\n\nTwo lines."}],
  ]
  if family != "gemma":  # Gemma's template refuses a system turn (tested below)
    conversations.append([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": USER}])
  for messages in conversations:
    for prompt in (False, True):
      assert fmt.render(messages, add_generation_prompt=prompt) == ref.apply_chat_template(
          messages, tokenize=False, add_generation_prompt=prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_is_prompt_then_answer_then_end_of_turn(dirs, refs, family):
  vocab = hf_vocab.HFVocabulary.from_dir(dirs[family])
  fmt = chat.ChatFormat(vocab)
  ref = refs[family]
  inputs, targets = fmt.split(USER, ANSWER)
  messages = [{"role": "user", "content": USER}]
  # The BOS the template writes is the row's start token (`start_id`), not part of `inputs`.
  writes_bos = family in ("llama3", "llama3_instruct", "gemma")
  bos = vocab.id_to_token(vocab.bos_id) if writes_bos else ""
  assert bos + inputs == ref.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
  full = ref.apply_chat_template(messages + [{"role": "assistant", "content": ANSWER}],
                                 tokenize=False)
  end = END_OF_TURN[family]
  assert fmt.end_of_turn == end
  assert full.startswith(bos + inputs + targets + end)
  assert full[len(bos + inputs + targets + end):].strip() == ""  # only a next turn's newline
  # Llama 3 and Gemma trim the answer, Qwen2 keeps it as it is.
  assert targets == (ANSWER if family == "qwen2" else ANSWER.strip())
  # The task's vocabulary ends each answer with the end-of-turn marker, once.
  task_vocab = fmt.vocabulary
  assert task_vocab.eos_id == vocab.token_to_id(end)
  assert (task_vocab is vocab) == (vocab.eos_id == vocab.token_to_id(end))
  tokens = task_vocab.encode(inputs) + task_vocab.encode(targets) + [task_vocab.eos_id]
  reference = _ids(ref.apply_chat_template(
      messages + [{"role": "assistant", "content": ANSWER}], tokenize=True))
  if writes_bos:  # the training row, start token first, is exactly the template's ids
    assert [vocab.start_id] + tokens == reference[:len(tokens) + 1]
  else:  # Qwen2 writes no BOS: the row starts from <|endoftext|>, then the template's ids
    assert tokens == reference[:len(tokens)]
  skip = len(task_vocab.encode(inputs)) + (1 if writes_bos else 0)
  assert task_vocab.decode(reference[skip:]) == targets
  kept = chat.ChatFormat(vocab, keep_bos=True).split(USER, ANSWER)[0]
  assert kept == bos + inputs


def test_system_prompt_and_template_errors(dirs, refs):
  qwen = chat.ChatFormat(dirs["qwen2"], system="Answer yes or no.")
  inputs, _ = qwen.split(USER, ANSWER)
  assert inputs == refs["qwen2"].apply_chat_template(
      [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": USER}],
      tokenize=False, add_generation_prompt=True)
  with pytest.raises(errors.DataError, match="gemma.*System role not supported"):
    chat.ChatFormat(dirs["gemma"], system="Be brief.")
  vocab = hf_vocab.HFVocabulary.from_dir(dirs["qwen2"])
  no_template = vocab.files
  config = json.loads(no_template["tokenizer_config.json"])
  del config["chat_template"]
  no_template["tokenizer_config.json"] = json.dumps(config)
  with pytest.raises(errors.ConfigError, match="no chat template"):
    chat.ChatFormat(hf_vocab.HFVocabulary(no_template, source="bare"))
  import seqio

  with pytest.raises(errors.ConfigError, match="needs an HF tokenizer"):
    chat.ChatFormat(seqio.ByteVocabulary())
  reordering = "{% for m in messages|reverse %}{{ m.content }}|{% endfor %}"
  with pytest.raises(errors.DataError, match="does not start with the prompt"):
    chat.ChatFormat(vocab, chat_template=reordering)


def test_transformers_jinja_environment(dirs, refs):
  """The globals and options transformers gives chat templates: raise_exception, strftime_now,
  namespace, dict, loop controls, tojson without HTML escaping, {% generation %}, trim/lstrip."""
  template = (
      "{% set ns = namespace(n=0) %}\n"
      "{% for m in messages %}\n"
      "  {% if m.role == 'system' %}{% continue %}{% endif %}\n"
      "  {% set ns.n = ns.n + 1 %}\n"
      "  {{ ns.n }}:{{ m.role }}:{{ m.content | tojson }}{{ dict(a=1) | tojson }}\n"
      "  {% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]{% endgeneration %}"
      "{% endif %}\n"
      "{% endfor %}\n"
      "{{ strftime_now('%Y') }}{{ eos_token }}{% if add_generation_prompt %}>>{% endif %}")
  vocab = hf_vocab.HFVocabulary.from_dir(dirs["llama3"])
  ref = refs["llama3"]
  messages = [{"role": "system", "content": "skip"}, {"role": "user", "content": "<b>&\"é"},
              {"role": "assistant", "content": "ok", "name": None}]
  for prompt in (False, True):
    assert chat.render(template, messages, add_generation_prompt=prompt,
                       **vocab.special_tokens) == ref.apply_chat_template(
                           messages, chat_template=template, tokenize=False,
                           add_generation_prompt=prompt)
  failing = "{{ raise_exception('no ' + messages[0].role) }}"
  with pytest.raises(errors.DataError, match="TemplateError: no user"):
    chat.ChatFormat(vocab, chat_template=failing)
  escape = "{{ ''.__class__.__mro__ }}{{ messages }}"
  with pytest.raises(errors.DataError, match="SecurityError|UndefinedError"):
    chat.ChatFormat(vocab, chat_template=escape)


def test_file_task_with_chat_templates(dirs, refs, tmp_path):
  """PromptSource templates wrapped in the chat format: cached inputs are the chat prompt's ids,
  targets the answer + the end of turn, answer choices rendered as the answers are; the
  templates' fingerprint is stable across processes and changes with the chat format."""
  from mtjax.data import cache, file_tasks, pipeline, promptsource

  yaml = (
      "dataset: toy\ntemplates:\n  a1: !Template\n    answer_choices: yes ||| no\n    id: a1\n"
      "    jinja: '{{premise}} Question: {{hypothesis}} Yes or no? ||| "
      "{{ answer_choices[label] }}'\n    name: yes_no\n    reference: test\n")
  path = tmp_path / "templates.yaml"
  path.write_text(yaml)
  templates = promptsource.load(str(path))
  data = tmp_path / "dev.jsonl"
  records = [{"premise": "A man plays guitar.", "hypothesis": "Music is made.", "label": 0},
             {"premise": "The café is closed.", "hypothesis": "It's open — now.", "label": 1}]
  data.write_text("".join(json.dumps(r) + "\n" for r in records))
  fmt = chat.ChatFormat(dirs["gemma"])
  wrapped = fmt.wrap_all(templates)
  assert wrapped[0].name == "yes_no"
  task = file_tasks.register_file_task("chat_task", {"validation": str(data)}, wrapped,
                                       vocabulary=fmt.vocabulary)
  cache_dir = str(tmp_path / "cache")
  manifest = cache.cache_task_split(task, "validation", cache_dir)
  ref = refs["gemma"]
  examples = pipeline.read_examples(cache_dir, "chat_task", "validation")
  for ex, record in zip(examples, records):
    user = f"{record['premise']} Question: {record['hypothesis']} Yes or no?"
    answer = ["yes", "no"][record["label"]]
    full = _ids(ref.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        tokenize=True))
    tokens = [fmt.vocabulary.start_id] + list(ex["inputs"]) + list(ex["targets"]) + [
        fmt.vocabulary.eos_id]  # the decoder row: start token (Gemma's BOS) first
    assert tokens == full[:len(tokens)]
    assert ex["targets_pretokenized"] == answer
    assert [c.decode() if isinstance(c, bytes) else c for c in ex["answer_choices"]] == [
        "yes", "no"]
  assert manifest["output_features"]["targets"]["eos_id"] == ref.convert_tokens_to_ids(
      "<end_of_turn>")
  # Stable repr (it is the templates' part of the fingerprint), different for another format.
  again = chat.ChatFormat(dirs["gemma"]).wrap_all(templates)
  assert repr(again) == repr(wrapped)
  assert cache.fingerprint(file_tasks.register_file_task(
      "chat_task", {"validation": str(data)}, again, vocabulary=fmt.vocabulary),
      "validation") == manifest["fingerprint"]
  other = chat.ChatFormat(dirs["gemma"], template_kwargs={"x": 1}).wrap_all(templates)
  assert repr(other) != repr(wrapped)
  restored = pickle.loads(pickle.dumps(wrapped[0]))
  assert restored.render(records[0]) == wrapped[0].render(records[0])
