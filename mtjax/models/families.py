"""The two model families (`mtjax.models.t5`, `mtjax.models.decoder`), and which one a model or
a family config belongs to.

It sits below `registry`, `hf`, `hf_meta` and `store`, which all ask it, so they need not ask
each other: `registry` builds models from HF checkpoints through `hf`, `hf` exports with the
facts `hf_meta` reads, and `hf_meta` finds model dirs through `store`; none of them imports
`registry` back (tests/test_layers.py checks that mtjax has no import circle).
"""

from __future__ import annotations

from types import ModuleType

from mtjax.models import decoder, t5


def family(model_or_config) -> ModuleType:
  """The family module (`t5` or `decoder`) of a model or config."""
  if isinstance(model_or_config, (t5.T5, t5.T5Config)):
    return t5
  if isinstance(model_or_config, (decoder.Decoder, decoder.DecoderConfig)):
    return decoder
  raise TypeError(f"not an mtjax model or config: {type(model_or_config).__name__}")


def name(model_or_config) -> str:
  """`"t5"` or `"decoder"`: the family's name in model dirs, export metadata and HF tables."""
  return "t5" if family(model_or_config) is t5 else "decoder"
