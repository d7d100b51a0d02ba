"""Tokenizer dirs built in the test (no network, no Hub), laid out like the real families'.

Each builder trains a tiny tokenizer with the `tokenizers` library on real English sentences and
writes `tokenizer.json` plus the config files a model repo ships, with the family's special tokens
where the family puts them (Llama 3: specials after the BPE vocabulary, so id 0 is "!"; Gemma and
T5: pad / eos / ... first). `tokenizer_class: PreTrainedTokenizerFast` makes transformers (the
reference) load `tokenizer.json` as it is.
"""

from __future__ import annotations

import json
import os

SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar on stage, and the crowd sings along.",
    "\"The Osbournes\" is a reality show about Ozzy Osbourne's family.",
    "It's raining in Paris; the café on the corner is closed.",
    "Dogs don't like thunderstorms.\nThey hide under the bed.",
    "Nobody knew whether the bridge, built in 1932, would survive the flood.",
    "She said: 'I'll be there by noon' — but she arrived at 3 p.m.",
    "Zürich, São Paulo and Kraków are cities; naïve résumés are words.",
    "The committee approved the budget after a two-hour debate.",
    "Question: Is the sky blue? Answer: yes.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The president of the company resigned on Monday.",
    "Tabs\tand  double  spaces stay as they are.",
    "Premise: A woman is reading a book in the park. Hypothesis: A person is outdoors.",
]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def _write(path: str, tokenizer, configs: dict) -> str:
  os.makedirs(path, exist_ok=True)
  tokenizer.save(os.path.join(path, "tokenizer.json"))
  for name, value in configs.items():
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
      json.dump(value, f, ensure_ascii=False, indent=1)
  return path


# The pre-tokenizer regexes of the real tokenizer.json files (Llama 3 splits digits in threes).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?"
               r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_bpe(vocab_size: int, split: str, texts=SENTENCES, nfc: bool = False):
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  if nfc:
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(texts) * 3, trainer)
  return tok


def llama3(path: str, *, instruct: bool = False, vocab_size: int = 340, texts=SENTENCES) -> str:
  """Llama 3 layout: byte-level BPE, specials appended (`<|begin_of_text|>` first of them), a
  post-processor that prepends BOS, `clean_up_tokenization_spaces: true`; Instruct: eos
  `<|eot_id|>` and generation_config's end ids [end_of_text, eot]."""
  from tokenizers import processors

  tok = _byte_level_bpe(vocab_size, LLAMA3_SPLIT, texts)
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>"]
  tok.add_special_tokens(specials)
  ids = {t: tok.token_to_id(t) for t in specials}
  tok.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", ids["<|begin_of_text|>"])])
  eos = "<|eot_id|>" if instruct else "<|end_of_text|>"
  gen_eos = ([ids["<|end_of_text|>"], ids["<|eot_id|>"]] if instruct
             else ids["<|end_of_text|>"])
  return _write(path, tok, {
      "tokenizer_config.json": {
          "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
          "eos_token": eos, "clean_up_tokenization_spaces": True, "chat_template": LLAMA3_TEMPLATE,
          "model_max_length": 131072},
      "generation_config.json": {"bos_token_id": ids["<|begin_of_text|>"],
                                 "eos_token_id": gen_eos},
      "config.json": {"model_type": "llama", "bos_token_id": ids["<|begin_of_text|>"],
                      "eos_token_id": gen_eos, "vocab_size": tok.get_vocab_size()}})


def qwen2(path: str, *, instruct: bool = True) -> str:
  """Qwen2 layout: byte-level BPE, `<|endoftext|>` `<|im_start|>` `<|im_end|>` appended, no BOS
  (tokenizer_config's `bos_token: null`, although config.json names one), pad `<|endoftext|>`."""
  tok = _byte_level_bpe(330, QWEN2_SPLIT, nfc=True)
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  end = tok.token_to_id("<|endoftext|>")
  return _write(path, tok, {
      "tokenizer_config.json": {
          "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
          "eos_token": "<|im_end|>" if instruct else "<|endoftext|>",
          "pad_token": "<|endoftext|>", "unk_token": None, "clean_up_tokenization_spaces": False,
          "chat_template": QWEN2_TEMPLATE},
      "generation_config.json": {"bos_token_id": end, "eos_token_id": (
          [tok.token_to_id("<|im_end|>"), end] if instruct else end), "pad_token_id": end},
      "config.json": {"model_type": "qwen2", "bos_token_id": end, "eos_token_id": end}})


def gemma(path: str) -> str:
  """Gemma layout: SentencePiece-style BPE ("▁" for spaces), pad 0, eos 1, bos 2, unk 3, and the
  chat markers `<start_of_turn>` `<end_of_turn>` (special)."""
  from tokenizers import Tokenizer, decoders, models, normalizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
  trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"])
  tok.train_from_iterator(SENTENCES * 3, trainer)
  tok.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
  return _write(path, tok, {
      "tokenizer_config.json": {
          "tokenizer_class": "PreTrainedTokenizerFast",
          "bos_token": {"__type": "AddedToken", "content": "<bos>", "lstrip": False,
                        "normalized": False, "rstrip": False, "single_word": False},
          "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
          "chat_template": GEMMA_TEMPLATE},
      "special_tokens_map.json": {"bos_token": "<bos>", "eos_token": "<eos>",
                                  "pad_token": "<pad>", "unk_token": "<unk>"},
      "generation_config.json": {"bos_token_id": 2, "pad_token_id": 0,
                                 "eos_token_id": [1, tok.token_to_id("<end_of_turn>")]},
      "config.json": {"model_type": "gemma", "bos_token_id": 2, "eos_token_id": 1,
                      "pad_token_id": 0}})


def t5(path: str, *, bare: bool = False) -> str:
  """T5 / mT5 layout: a Unigram (SentencePiece) model, pad 0, eos `</s>` 1, unk 2, Metaspace
  pre-tokenizer, a post-processor that appends `</s>`. `bare`: only tokenizer.json and
  config.json (special ids from config.json)."""
  from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                          trainers)

  tok = Tokenizer(models.Unigram())
  tok.normalizer = normalizers.NFKC()
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  trainer = trainers.UnigramTrainer(vocab_size=200, show_progress=False, unk_token="<unk>",
                                    special_tokens=["<pad>", "</s>", "<unk>"])
  tok.train_from_iterator(SENTENCES * 3, trainer)
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", 1)])
  configs = {"config.json": {"model_type": "t5", "pad_token_id": 0, "eos_token_id": 1,
                             "decoder_start_token_id": 0}}
  if not bare:
    configs["tokenizer_config.json"] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>"}
  return _write(path, tok, configs)


def reference(path: str):
  """transformers' tokenizer of the dir (the test-only reference)."""
  import transformers

  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
