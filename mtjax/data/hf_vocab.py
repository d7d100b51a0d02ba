"""Hugging Face tokenizers as SeqIO vocabularies: a model's own `tokenizer.json`, no transformers.

    vocab = HFVocabulary.from_dir("/ckpt/Llama-3.2-1B")   # or gs://..., or data.tokenizer=...
    seqio.Feature(vocabulary=vocab)                        # in a task, as any SeqIO vocabulary

A decoder checkpoint (Llama 3, Qwen2, Gemma) arrives with its tokenizer; its embeddings only mean
something for that tokenizer's ids. `HFVocabulary` runs the `tokenizers` library (Rust, the
engine under transformers' fast tokenizers) on the dir's `tokenizer.json`, so the ids are the ones
`AutoTokenizer.from_pretrained(dir).encode(text, add_special_tokens=False)` gives, without
importing transformers (a test-only reference) or reaching the Hub.

SeqIO's contract, which this class keeps:
- `encode(text)` is the text's ids and nothing else: no BOS, no EOS. SeqIO appends EOS itself
  (`Feature(add_eos=True)`); the tokenizer's post-processor (Llama 3 prepends BOS, T5 appends
  `</s>`) is not run, exactly as with transformers' `add_special_tokens=False`. Special tokens
  written in the text (`<|eot_id|>`, a chat template's `<|begin_of_text|>`) are matched, as
  transformers does.
- `decode(ids)` stops at the first end id (EOS, or an end id of `generation_config.json`, such as
  Llama 3 Instruct's `<|eot_id|>`: where HF's `generate` stops too), and skips special tokens
  (pad, BOS, EOS, chat markers), as transformers' `decode(..., skip_special_tokens=True)`.
- `eos_id`, `unk_id`, `bos_id` are the tokenizer's, resolved as transformers resolves them:
  `tokenizer_config.json`, then `special_tokens_map.json` (a token named null there, as Qwen2's
  `bos_token`, is none). A dir with neither file (a bare converted T5 `tokenizer.json`) takes
  the ids `generation_config.json` / `config.json` name and the model's own unk; an EOS named
  nowhere else is looked up there too. Llama 3: bos 128000, eos 128001 (base) / 128009
  `<|eot_id|>` (Instruct); Qwen2: no bos, eos `<|endoftext|>` (base) / `<|im_end|>` (Instruct);
  Gemma: bos 2, eos 1; T5: eos 1, unk 2.
- `pad_id` is 0, SeqIO's `PAD_ID`: SeqIO's converters and mtjax's pad with 0 and read 0 as padding
  whatever the vocabulary says, so the vocabulary names the id padding really is. For Gemma and
  T5 that is also the tokenizer's pad token; Llama 3 has none, and Qwen2's pad is `<|endoftext|>`.
  The tokenizer's own pad (for an HF export's configs) is `special_ids["pad"]` (None if none).
  Caution: in Llama 3 and Qwen2 id 0 is a real token ("!"), so code must find padding by lengths
  or segment ids, never by `id == 0`.

BOS. Llama and Gemma were pretrained with BOS first; Qwen2 and T5 have none. BOS is a fact of
the model's input, not of the text, so `encode` never adds it: `start_id` (the BOS; Qwen2's
`<|endoftext|>`; T5's pad 0) is the token mtjax starts every decoder row and generation prompt
from (the cache manifest records it; `feature_converters.autoregressive_inputs`). Chat templates
write BOS too (`{{ bos_token }}`); the chat format (`mtjax.data.chat`) drops that copy, so the
row is exactly `apply_chat_template`'s ids. `with_bos()` puts BOS into a feature's own ids
(for a model fed some other way; with mtjax's start token it would appear twice).

Copies and pickles carry the files' contents (not a path), so SeqIO's and Grain's workers and
cloudpickled tasks rebuild the same tokenizer anywhere. `fingerprint` hashes what determines the
ids (tokenizer.json, the resolved special ids, the options), so a cache built with one tokenizer
is rebuilt for another (mtjax.data.cache).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mtjax import errors, fs

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
# What a tokenizer dir may hold besides tokenizer.json (read when present; carried in copies).
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                "config.json", "chat_template.jinja")
SPECIALS = ("bos", "eos", "unk", "pad")
PAD_ID = 0  # seqio.vocabularies.PAD_ID: what SeqIO's and mtjax's converters pad with


def has_tokenizer(path: str) -> bool:
  """Whether `path` (a local dir or URL) holds an HF fast tokenizer (`tokenizer.json`)."""
  if not path:
    return False
  try:
    return fs.isfile(fs.join(path, TOKENIZER_FILE))
  except OSError:  # an unreadable dir has no tokenizer we could use; callers name the dir
    return False


def read_files(path: str) -> dict[str, str]:
  """The tokenizer files of a dir (local or URL): {file name: text} for those present."""
  tokenizer_path = fs.join(path, TOKENIZER_FILE)
  try:
    present = fs.isfile(tokenizer_path)
  except OSError as e:
    raise errors.MissingError(f"tokenizer dir {path!r} cannot be read ({e})") from None
  if not present:
    hint = ("a SentencePiece-only dir (tokenizer.model) is a seqio.SentencePieceVocabulary; or "
            "save a tokenizer.json with transformers: AutoTokenizer.from_pretrained(dir)"
            ".save_pretrained(dir)")
    raise errors.MissingError(f"tokenizer dir {path!r} has no {TOKENIZER_FILE}", hint=hint)
  files = {}
  for name in (TOKENIZER_FILE, *CONFIG_FILES):
    file_path = fs.join(path, name)
    if name == TOKENIZER_FILE or fs.isfile(file_path):
      files[name] = fs.read_text(file_path)
  return files


def _token_text(value) -> str | None:
  """A special token as a config writes it: a string, or an AddedToken dict ({"content": ...})."""
  if isinstance(value, Mapping):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _first_id(value) -> int | None:
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _all_ids(value) -> list[int]:
  values = value if isinstance(value, (list, tuple)) else [value]
  return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


@functools.lru_cache(maxsize=16)
def _load_tokenizer(text: str):
  """A `tokenizers.Tokenizer` from tokenizer.json text (shared: the Rust object is read-only)."""
  import tokenizers  # pylint: disable=g-import-not-at-top

  return tokenizers.Tokenizer.from_str(text)


class HFVocabulary:
  """A SeqIO vocabulary over an HF `tokenizer.json` (see the module docstring for the contract).

  It implements the whole `seqio.Vocabulary` interface (`encode`, `decode`, `encode_tf`,
  `decode_tf`, `eos_id`, `pad_id`, `unk_id`, `bos_id`, `vocab_size`, `extra_ids`) without
  inheriting it: importing SeqIO imports TensorFlow (~10 s), which a run on an existing cache never
  needs. SeqIO never checks a vocabulary's type. The class registers itself as a virtual subclass
  of `seqio.Vocabulary` when it is imported, constructed or unpickled, or runs a TF method, with
  SeqIO already imported; from then on `isinstance(vocab, seqio.Vocabulary)` holds.
  """

  def __init__(self, files: Mapping[str, str], *, source: str = "", add_bos: bool = False,
               eos: str | int | None = None):
    """`files`: {file name: text} of a tokenizer dir (`read_files`); `source`: where they came
    from (for messages); `add_bos`: `encode` prepends BOS; `eos`: overrides the EOS (a token or an
    id; the tokenizer's EOS stays an end id for `decode`)."""
    if TOKENIZER_FILE not in files:
      raise errors.MissingError(f"tokenizer {source or '(files)'}: no {TOKENIZER_FILE} given")
    self._files = dict(files)
    self._source = source
    self._add_bos = bool(add_bos)
    self._eos_override = eos
    self._setup()
    _register_with_seqio()

  @classmethod
  def from_dir(cls, path: str, *, add_bos: bool = False, eos: str | int | None = None):
    """Reads a tokenizer dir (local, or a URL such as `gs://...`); a path to a `tokenizer.json`
    file means its dir."""
    path = str(path)
    if path.rstrip("/").endswith("/" + TOKENIZER_FILE) or path == TOKENIZER_FILE:
      path = path.rstrip("/")[:-len(TOKENIZER_FILE)].rstrip("/") or "."
    return cls(read_files(path), source=path, add_bos=add_bos, eos=eos)

  # --- construction -----------------------------------------------------------------------------

  def _json(self, name: str) -> dict:
    text = self._files.get(name)
    if text is None:
      return {}
    try:
      value = json.loads(text)
    except json.JSONDecodeError as e:
      raise errors.DataError(f"tokenizer {self._source}: {name} is not valid JSON ({e.msg}, line "
                             f"{e.lineno})") from None
    if not isinstance(value, dict):
      raise errors.DataError(f"tokenizer {self._source}: {name} is not a JSON object")
    return value

  def _setup(self) -> None:
    try:
      self._tokenizer = _load_tokenizer(self._files[TOKENIZER_FILE])
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
      raise errors.DataError(f"tokenizer {self._source}: {TOKENIZER_FILE} cannot be loaded by the "
                             f"tokenizers library ({e})") from None
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    self._size = max(vocab.values()) + 1 if vocab else 0
    tok_config = self._json("tokenizer_config.json")
    tokens_map = self._json("special_tokens_map.json")
    gen_config = self._json("generation_config.json")
    model_config = self._json("config.json")
    # Special tokens by name (transformers' `special_tokens_map`): the chat template sees these.
    self._tokens: dict[str, str] = {}
    for source in (tok_config, tokens_map):  # tokenizer_config.json first, as transformers 5
      for key, value in source.items():
        text = _token_text(value)
        if key.endswith("_token") and text is not None and key not in self._tokens:
          self._tokens[key] = text
    # transformers' tokenizer reads only the tokenizer files; a dir without them gets the ids
    # the model's configs name (what `generate` would use), so a bare converted T5 works.
    bare = not tok_config and not tokens_map
    ids: dict[str, int | None] = {}
    for name in SPECIALS:
      token = self._tokens.get(f"{name}_token")
      if token is not None:
        ids[name] = self._tokenizer.token_to_id(token)
        if ids[name] is None:
          log.warning("tokenizer %s: %s_token %r is not in %s; ignored", self._source, name, token,
                      TOKENIZER_FILE)
      elif bare or name == "eos":  # the model's configs: a bare (converted) tokenizer.json, or
        # no EOS named (a tokenizer without one cannot end a SeqIO feature)
        ids[name] = _first_id(gen_config.get(f"{name}_token_id"))
        if ids[name] is None:
          ids[name] = _first_id(model_config.get(f"{name}_token_id"))
      else:  # named nowhere, or null (Qwen2's bos_token): the tokenizer has none
        ids[name] = None
      if ids[name] is not None and not 0 <= ids[name] < self._size:
        log.warning("tokenizer %s: %s id %d is outside the vocabulary (%d); ignored",
                    self._source, name, ids[name], self._size)
        ids[name] = None
    if ids["unk"] is None and bare:  # the model's own unknown token (Unigram, BPE, WordPiece)
      model = json.loads(self._files[TOKENIZER_FILE]).get("model") or {}
      unk = model.get("unk_id") if model.get("type") == "Unigram" else (
          self._tokenizer.token_to_id(model["unk_token"]) if model.get("unk_token") else None)
      ids["unk"] = unk if isinstance(unk, int) and 0 <= unk < self._size else None
    hf_eos = ids["eos"]
    self._hf_eos = hf_eos  # the tokenizer's own EOS (a `with_eos` override aside): `start_id`
    if self._eos_override is not None:
      ids["eos"] = self._id_of(self._eos_override, "eos")
    if ids["eos"] is None:
      raise errors.DataError(
          f"tokenizer {self._source}: no EOS token (looked for eos_token in tokenizer_config.json "
          "and special_tokens_map.json, eos_token_id in generation_config.json and config.json)",
          hint="add \"eos_token\" to tokenizer_config.json, or pass eos=<token> to HFVocabulary")
    self._ids = ids
    # Where decoding ends: EOS, the tokenizer's own EOS, and generate()'s end ids.
    ends = [ids["eos"], hf_eos, *_all_ids(gen_config.get("eos_token_id"))]
    self._stop_ids = tuple(dict.fromkeys(i for i in ends if i is not None and 0 <= i < self._size))
    # transformers 5 applies `clean_up_tokenization_spaces` to non-BPE models only.
    self._cleanup = bool(tok_config.get("clean_up_tokenization_spaces", False)) and (
        type(self._tokenizer.model).__name__ != "BPE" or bool(tok_config.get(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)))
    if self._add_bos and ids["bos"] is None:
      raise errors.DataError(f"tokenizer {self._source}: add_bos, but the tokenizer has no BOS "
                             "token (bos_token)")
    parts = [self._files[TOKENIZER_FILE], json.dumps(
        {"ids": ids, "stop": self._stop_ids, "cleanup": self._cleanup, "bos": self._add_bos},
        sort_keys=True)]
    self._fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()

  def _id_of(self, token: str | int, what: str) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
      if not 0 <= token < self._size:
        raise errors.DataError(f"tokenizer {self._source}: {what} id {token} is outside the "
                               f"vocabulary ({self._size} ids)")
      return token
    found = self._tokenizer.token_to_id(str(token))
    if found is None:
      raise errors.DataError(f"tokenizer {self._source}: {what} token {token!r} is not in "
                             f"{TOKENIZER_FILE}")
    return found

  # --- variants ---------------------------------------------------------------------------------

  def with_bos(self) -> "HFVocabulary":
    """This vocabulary with `encode` prepending BOS (for a decoder task's `inputs` feature)."""
    return HFVocabulary(self._files, source=self._source, add_bos=True, eos=self._eos_override)

  def with_eos(self, token: str | int) -> "HFVocabulary":
    """This vocabulary with another EOS (a token or an id), e.g. a chat model's end of turn; the
    tokenizer's own EOS still ends `decode`."""
    return HFVocabulary(self._files, source=self._source, add_bos=self._add_bos, eos=token)

  # --- facts ------------------------------------------------------------------------------------

  @property
  def tokenizer(self):
    """The `tokenizers.Tokenizer` (shared and read-only: do not reconfigure it)."""
    return self._tokenizer

  @property
  def files(self) -> dict[str, str]:
    """The tokenizer dir's files this vocabulary was built from ({name: text}), e.g. to copy
    them next to an exported model."""
    return dict(self._files)

  @property
  def source(self) -> str:
    return self._source

  @property
  def fingerprint(self) -> str:
    """A hash of what fixes the ids: tokenizer.json, the special ids, the options."""
    return self._fingerprint

  @property
  def add_bos(self) -> bool:
    return self._add_bos

  @property
  def special_tokens(self) -> dict[str, str]:
    """Named special tokens as transformers' `special_tokens_map` ({"bos_token": ..., ...})."""
    return dict(self._tokens)

  @property
  def special_ids(self) -> dict[str, int | None]:
    """bos / eos / unk / pad ids as an HF export's configs should name them (None: none): the
    tokenizer's, except `eos`, which is this vocabulary's EOS (a `with_eos` override included).
    `pad` is the tokenizer's pad token, which may differ from `pad_id` (SeqIO's padding)."""
    return dict(self._ids)

  @property
  def start_id(self) -> int:
    """The token a decoder row starts from (`feature_converters.autoregressive_inputs`): what
    the model was pretrained to read first. Its BOS when the tokenizer has one (Llama 3
    `<|begin_of_text|>`, Gemma `<bos>`). Without one (Qwen2), the BOS id the model's configs
    name, which is what HF `generate` starts from on an empty prompt (Qwen2: `<|endoftext|>`),
    then the tokenizer's pad (Qwen2: `<|endoftext|>` too), then its own EOS: the document
    separator such models were pretrained on, so a row begins as a new document does (the GPT-2
    convention). Never id 0 by default: in byte-level BPEs (Llama 3, Qwen2) 0 is the text "!".
    A T5 tokenizer gets its pad 0 this way, T5's decoder start."""
    if self._ids["bos"] is not None:
      return self._ids["bos"]
    for name in ("generation_config.json", "config.json"):
      configured = _first_id(self._json(name).get("bos_token_id"))
      if configured is not None and 0 <= configured < self._size:
        return configured
    if self._ids["pad"] is not None:
      return self._ids["pad"]
    return self._hf_eos if self._hf_eos is not None else self._ids["eos"]

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end a decoded sequence: EOS first, then generation_config.json's end ids."""
    return self._stop_ids

  @property
  def chat_template(self) -> str | None:
    """The tokenizer's chat template: `chat_template.jinja`, else tokenizer_config.json's
    `chat_template` (a string, or the "default" of a list of named templates)."""
    if "chat_template.jinja" in self._files:
      return self._files["chat_template.jinja"]
    value = self._json("tokenizer_config.json").get("chat_template")
    if isinstance(value, list):
      value = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
    if isinstance(value, Mapping):
      value = value.get("default")
    return value if isinstance(value, str) else None

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self._tokenizer.id_to_token(int(i))

  # --- seqio.Vocabulary -------------------------------------------------------------------------

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def eos_id(self) -> int:
    return self._ids["eos"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk"]

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def extra_ids(self) -> int:
    """0: sentinel tokens (T5's `<extra_id_*>`) are already in tokenizer.json's vocabulary."""
    return 0

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  @property
  def vocab_size(self) -> int:
    """Ids the tokenizer can produce: the highest id (added tokens included) plus one."""
    return self._size

  def _encode(self, s: str) -> list[int]:
    ids = self._tokenizer.encode(s, add_special_tokens=False).ids
    return [self._ids["bos"], *ids] if self._add_bos else ids

  def encode(self, s: str | bytes) -> list[int]:
    """The text's ids (no EOS; BOS first only for a `with_bos()` vocabulary)."""
    return self._encode(s.decode("utf-8") if isinstance(s, bytes) else s)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, through the tokenizer's batch encoder (the TF-free cache path)."""
    # encode_batch_fast (tokenizers >= 0.21): the same ids without the character offsets
    encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
    rows = [e.ids for e in encode(list(texts), add_special_tokens=False)]
    return [[self._ids["bos"], *ids] for ids in rows] if self._add_bos else rows

  def _decode(self, ids: Sequence[int]) -> str:
    text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    return _clean_up_tokenization(text) if self._cleanup else text

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first end id (`stop_ids`), special tokens skipped."""
    if hasattr(ids, "numpy"):  # an eager tf.Tensor: one conversion, not one per element
      ids = ids.numpy()
    clean = []
    stops = set(self._stop_ids)
    for i in ids:
      i = int(i)
      if i in stops:
        break
      if not 0 <= i < self._size:
        if self._ids["unk"] is None:
          continue
        i = self._ids["unk"]
      clean.append(i)
    return self._decode(clean)

  def encode_tf(self, s):
    """A scalar tf.string -> int32 ids [n] (or a [B] vector -> a ragged [B, None])."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (cache time only)

    _register_with_seqio()
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      return tf.ensure_shape(ids, [None])
    values, lengths = tf.numpy_function(self._encode_batch_np, [tf.reshape(s, [-1])],
                                        [tf.int32, tf.int64], stateful=False)
    return tf.RaggedTensor.from_row_lengths(tf.ensure_shape(values, [None]),
                                            tf.ensure_shape(lengths, [None]))

  _encode_tf = encode_tf

  def decode_tf(self, ids):
    """int ids [n] -> a scalar tf.string ([B, n] -> [B]), up to each row's first end id."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (cache time only)

    _register_with_seqio()
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 1:
      out = tf.numpy_function(lambda x: self.decode(x).encode("utf-8"), [ids], tf.string,
                              stateful=False)
      return tf.ensure_shape(out, [])
    out = tf.numpy_function(
        lambda x: np.array([self.decode(r).encode("utf-8") for r in x], dtype=object),
        [tf.reshape(ids, [-1, tf.shape(ids)[-1]])], tf.string, stateful=False)
    return tf.reshape(out, tf.shape(ids)[:-1])

  _decode_tf = decode_tf

  def _encode_np(self, s) -> np.ndarray:
    return np.asarray(self.encode(s.item() if isinstance(s, np.ndarray) else s), np.int32)

  def _encode_batch_np(self, strings):
    rows = [self.encode(s) for s in strings.tolist()]
    values = np.asarray([i for row in rows for i in row], np.int32)
    return values, np.asarray([len(r) for r in rows], np.int64)

  # --- identity, copies -------------------------------------------------------------------------

  def __eq__(self, other) -> bool:
    return isinstance(other, HFVocabulary) and self._fingerprint == other._fingerprint

  def __hash__(self) -> int:
    return hash(self._fingerprint)

  def __repr__(self) -> str:
    bos = ", add_bos=True" if self._add_bos else ""
    return (f"HFVocabulary({self._source or '<files>'!r}, vocab_size={self._size}, "
            f"eos_id={self.eos_id}{bos}, fingerprint={self._fingerprint[:12]})")

  def __getstate__(self) -> dict[str, Any]:
    return {"files": self._files, "source": self._source, "add_bos": self._add_bos,
            "eos": self._eos_override}

  def __setstate__(self, state: Mapping[str, Any]) -> None:
    self._files = dict(state["files"])
    self._source = state["source"]
    self._add_bos = state["add_bos"]
    self._eos_override = state["eos"]
    self._setup()
    _register_with_seqio()


def _clean_up_tokenization(text: str) -> str:
  """transformers' `clean_up_tokenization` (for tokenizers whose config asks for it)."""
  return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
          .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
          .replace(" 've", "'ve").replace(" 're", "'re"))


def _register_with_seqio() -> None:
  """`isinstance(vocab, seqio.Vocabulary)` once SeqIO is imported (never imports it itself)."""
  seqio = sys.modules.get("seqio")
  vocabulary = getattr(seqio, "Vocabulary", None)
  if vocabulary is not None and not issubclass(HFVocabulary, vocabulary):
    vocabulary.register(HFVocabulary)


_register_with_seqio()
