"""Chat format for decoder file tasks: each record rendered through the tokenizer's chat template.

An instruction-tuned decoder (Llama 3 Instruct, Qwen2 Instruct, Gemma IT) was trained on
conversations laid out by its chat template; finetuning it on bare `inputs` / `targets` text
teaches it a layout it never sees at inference. `ChatFormat` wraps prompt templates so each
record becomes one user turn and one assistant answer, rendered as transformers'
`apply_chat_template(messages, tokenize=False)` renders them (same Jinja sandbox, options and
globals; transformers is not imported):

    fmt = chat.ChatFormat(vocabularies.default())   # the run's HF tokenizer (data.tokenizer)
    register_file_task("rte_chat", files, templates=fmt.wrap_all(templates),
                       vocabulary=fmt.vocabulary, metric_fns=[...])

- `inputs` = the conversation up to the assistant's turn, generation prompt included
  (`add_generation_prompt=True`), without the BOS the template writes first (Llama 3, Gemma):
  the row's start token is that BOS already (`HFVocabulary.start_id`), so the model reads what
  `apply_chat_template` gives it at inference.
- `targets` = the answer as the template renders it (e.g. Llama 3 and Gemma `trim` it), without
  the end-of-turn marker. The marker (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`) is the task's
  EOS instead: `fmt.vocabulary` is the tokenizer with that EOS, so SeqIO's `add_eos` ends each
  answer with it exactly once, generation stops there, and the decoded prediction and the target
  text are both the bare answer, which metrics and rank classification compare. (Text the
  template puts after the marker, such as the newline before the next turn, is not trained.)
- `answer_choices` get the same treatment, so rank classification scores what training saw.

With `data.feature_converter=prefix_lm` (or `decoder_only`, which also weights only the targets)
the loss is on the answer and its end-of-turn marker only.

Templates that print today's date (`strftime_now`) make the cache depend on the day it is built:
fix the date through `template_kwargs` (e.g. Llama 3.2's `date_string`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
from typing import Any, Mapping, Sequence

from mtjax import errors

_PROBE = "mtjaxChatProbeAnswer7"  # an answer no template alters (no spaces to trim)


@functools.lru_cache(maxsize=32)
def _compile(source: str):
  """The template compiled as transformers compiles chat templates (`_compile_jinja_template`):
  an immutable sandbox, `trim_blocks` / `lstrip_blocks`, loop controls, the `{% generation %}`
  tag, and the globals `raise_exception`, `strftime_now`, `dict`, `namespace`, a `tojson` that
  does not escape HTML. Chat templates come from model repos: the sandbox keeps them harmless."""
  import jinja2  # pylint: disable=g-import-not-at-top
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  import jinja2.sandbox  # pylint: disable=g-import-not-at-top

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for masks): its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  class TemplateDict:
    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  class TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore names (no reaching CPython internals)."""

    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument  (Namespace's trick)
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        TemplateNamespace.check(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      TemplateNamespace.check(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check(name):
      if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore names on a namespace ({name!r})")

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  env.globals["dict"] = TemplateDict()
  env.globals["namespace"] = TemplateNamespace
  return env.from_string(source)


def render(chat_template: str, messages: Sequence[Mapping[str, Any]], *,
           add_generation_prompt: bool = False, **kwargs) -> str:
  """`messages` rendered by `chat_template`, as transformers' `apply_chat_template(messages,
  tokenize=False, add_generation_prompt=...)` with the tokenizer's special tokens in `kwargs`
  (`bos_token`, `eos_token`, ...). Keys whose value is None are dropped from each message, as
  transformers does."""
  chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
  return _compile(chat_template).render(messages=chat, tools=None, documents=None,
                                        add_generation_prompt=add_generation_prompt, **kwargs)


class ChatFormat:
  """Renders (user text, answer) pairs through a tokenizer's chat template; see the module doc.

  `vocabulary`: an `HFVocabulary` (or a tokenizer dir) with a chat template; `system`: a system
  message before each user turn (None: none; some templates, e.g. Qwen2's, add their default);
  `chat_template`: a Jinja template to use instead of the tokenizer's; `keep_bos`: keep the BOS
  the template writes at the start of `inputs` (default: dropped, because mtjax starts every
  decoder row with the tokenizer's BOS itself, `HFVocabulary.start_id`; kept, it would be there
  twice);
  `template_kwargs`: more variables for the template (e.g. `date_string`).
  """

  def __init__(self, vocabulary, *, system: str | None = None, chat_template: str | None = None,
               keep_bos: bool = False, template_kwargs: Mapping[str, Any] | None = None):
    from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top

    if isinstance(vocabulary, str):
      vocabulary = hf_vocab.HFVocabulary.from_dir(vocabulary)
    if not isinstance(vocabulary, hf_vocab.HFVocabulary):
      raise errors.ConfigError(
          f"the chat format needs an HF tokenizer (mtjax.data.hf_vocab.HFVocabulary), got "
          f"{type(vocabulary).__name__}", hint="set data.tokenizer (or model.hf_checkpoint) to a "
          "tokenizer dir with a chat template")
    self._base = vocabulary
    self._template = chat_template or vocabulary.chat_template
    if not self._template:
      raise errors.ConfigError(
          f"tokenizer {vocabulary.source}: no chat template (chat_template.jinja, or "
          "\"chat_template\" in tokenizer_config.json)",
          hint="pass chat_template=... to ChatFormat")
    self._system = system
    self._keep_bos = keep_bos
    self._kwargs = dict(template_kwargs or {})
    self._head, self._before_end, self._end = self._probe()
    if self._end is not None and vocabulary.token_to_id(self._end) != vocabulary.eos_id:
      self._vocabulary = vocabulary.with_eos(self._end)
    else:
      self._vocabulary = vocabulary

  @property
  def vocabulary(self):
    """The task's vocabulary: the tokenizer with the end-of-turn marker as EOS."""
    return self._vocabulary

  @property
  def end_of_turn(self) -> str | None:
    """The special token that ends the assistant's turn (None: the template writes none, and
    the tokenizer's EOS ends the answer)."""
    return self._end

  @property
  def chat_template(self) -> str:
    return self._template

  def render(self, messages: Sequence[Mapping[str, Any]], *,
             add_generation_prompt: bool = False) -> str:
    """The conversation as text: transformers' `apply_chat_template(..., tokenize=False)`."""
    kwargs = {**self._base.special_tokens, **self._kwargs}
    try:
      return render(self._template, messages, add_generation_prompt=add_generation_prompt,
                    **kwargs)
    except errors.UserError:
      raise
    except Exception as e:  # the template's own errors: raise_exception, undefined names, ...
      raise errors.DataError(f"chat template of tokenizer {self._base.source}: "
                             f"{type(e).__name__}: {e}") from None

  def _messages(self, user: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": self._system}] if self._system is not None else []
    return turns + [{"role": "user", "content": user}]

  def _tail(self, user: str, answer: str) -> tuple[str, str]:
    """(prompt, the text the assistant's answer adds to it)."""
    messages = self._messages(user)
    prompt = self.render(messages, add_generation_prompt=True)
    full = self.render(messages + [{"role": "assistant", "content": answer}])
    if not full.startswith(prompt):
      raise errors.DataError(
          f"chat template of tokenizer {self._base.source}: the conversation with the answer does "
          "not start with the prompt rendered with add_generation_prompt=True, so the answer "
          "cannot be split off", hint="pass a chat_template=... that renders turns in order")
    return prompt, full[len(prompt):]

  def _probe(self) -> tuple[str, str, str | None]:
    """(text before the answer in the assistant's turn, text between answer and end marker, the
    end-of-turn special token or None), from an answer the template cannot alter."""
    _, tail = self._tail("Hello.", _PROBE)
    at = tail.find(_PROBE)
    if at < 0:
      raise errors.DataError(f"chat template of tokenizer {self._base.source}: the assistant's "
                             "answer does not appear in the rendered conversation")
    head, suffix = tail[:at], tail[at + len(_PROBE):]
    specials = [t.content for t in self._base.tokenizer.get_added_tokens_decoder().values()
                if t.special and t.content]
    found = [(suffix.find(t), -len(t), t) for t in specials if t in suffix]
    if not found:
      return head, suffix.rstrip(), None
    at, _, token = min(found)
    return head, suffix[:at], token

  def split(self, user: str, answer: str) -> tuple[str, str]:
    """(inputs, targets) of one exchange: the prompt through the generation prompt, and the
    answer as the template renders it, without the end-of-turn marker (the task's EOS)."""
    prompt, tail = self._tail(user, answer)
    if not tail.startswith(self._head):
      raise errors.DataError(f"chat template of tokenizer {self._base.source}: the assistant's "
                             f"turn does not start with {self._head!r} as for other answers")
    body = tail[len(self._head):]
    end = body.rfind(self._before_end + self._end) if self._end else len(body.rstrip())
    if self._end and end < 0:
      raise errors.DataError(f"chat template of tokenizer {self._base.source}: the assistant's "
                             f"turn does not end with {self._end!r}")
    targets = self._head + body[:end] + (self._before_end if self._end else "")
    bos = self._base.special_tokens.get("bos_token")
    if not self._keep_bos and bos and prompt.startswith(bos):
      prompt = prompt[len(bos):]
    return prompt, targets

  def wrap(self, template) -> "ChatTemplate":
    """A prompt template (mtjax `Template`, PromptSource `PromptTemplate`, or anything with
    `.name` and `.render(record)`) whose output goes through the chat template."""
    return ChatTemplate(template, self)

  def wrap_all(self, templates: Sequence) -> list["ChatTemplate"]:
    return [self.wrap(t) for t in templates]

  def __repr__(self) -> str:
    # Stable across processes: part of a file task's cache fingerprint (through the templates).
    digest = hashlib.sha256(self._template.encode()).hexdigest()[:16]
    vocab = getattr(self, "_vocabulary", self._base)  # (also while __init__ is failing)
    return (f"ChatFormat(template={digest}, vocab={vocab.fingerprint[:16]}, "
            f"system={self._system!r}, keep_bos={self._keep_bos}, "
            f"kwargs={sorted(self._kwargs.items())!r})")


@dataclasses.dataclass(frozen=True, repr=False)
class ChatTemplate:
  """A prompt template rendered through a `ChatFormat` (a template for `register_file_task`)."""

  template: Any
  chat_format: ChatFormat

  @property
  def name(self) -> str:
    return self.template.name

  def render(self, record: Mapping[str, Any]) -> dict[str, Any]:
    out = self.template.render(record)
    inputs, targets = self.chat_format.split(out["inputs"], out["targets"])
    split = self.chat_format.split
    choices = [split(out["inputs"], c)[1] for c in out.get("answer_choices") or ()]
    return {"inputs": inputs, "targets": targets, "answer_choices": choices}

  def __repr__(self) -> str:
    return f"ChatTemplate({self.template!r}, {self.chat_format!r})"
