"""HFT, Half Fine-Tuning (Hui et al. 2024, arXiv:2404.18466, ACL 2025): train half of each
transformer layer's weight matrices and freeze the other half, chosen at random per layer.

The paper's rule (its method section and Figure 2, on Llama 2; checked against a public restatement
of it, the paper's own text was not reachable from here): in every layer, freeze two of the four
self-attention matrices (W_Q, W_K, W_V, W_O); of the three feed-forward matrices (W_gate, W_up,
W_down), freeze two in a random half of the layers and one in the other half, so that half of the
layers' matrices are frozen overall. A new round (a new training stage) draws a new selection.

In mtjax terms (`select`), per stack of layers (`layers`; T5: `encoder_layers` and
`decoder_layers`, each on its own):
- every attention module of a layer (decoder `attention`; T5 `self_attention` and, in the T5
  decoder, `cross_attention`, each its own group) freezes 2 of {query, key, value, out};
- the feed-forward module (decoder {gate, up, down}; gated T5 {wi_0, wi_1, wo}) freezes 2 in
  `floor(L / 2)` layers of the stack (which ones: drawn) and 1 in the others; a two-matrix
  feed-forward (T5 v1.0 {wi_0, wo}) freezes 1;
- a projection's bias (Qwen2's `query_bias` ...) goes with its matrix;
- everything outside the layers' matrices (embeddings, norms, the LM head, T5's relative-position
  tables) trains. The paper selects among the layers' matrices; it does not freeze these, and
  they are a small share of the parameters. A soft prompt (`prompt`) is frozen: HFT tunes the model.

The draw is a pure function of the parameter paths, `seed` and `round`: each candidate is ranked by
a SHA-256 of `(seed, round, stack, layer, module, name)`, and the lowest-ranked are frozen. So it is
the same on every host, in every process and for every numpy/JAX version, and a run records it in
`<run_dir>/trainable.json` (`filters.describe`). `train.trainable=hft` uses round 0,
`hft:<round>` another round (a per-round schedule with the same seed); any other schedule can be
written as path regexes (`regexes` gives this one's).

Scanned layers (`model.scan_layers=True`) keep all layers of a matrix in one stacked parameter, so
a per-layer choice cannot be a set of paths: refused with a ConfigError naming the option.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from mtjax import errors

# Members of a module group, as mtjax names them (both families).
ATTENTION = ("query", "key", "value", "out")
ATTENTION_MODULES = ("attention", "self_attention", "cross_attention")
FFN_MODULE = "mlp"
FFN = ("gate", "up", "down", "wi_0", "wi_1", "wo")
_LAYER = re.compile(r"^(?P<stack>\w*layers)/(?P<i>\d+)/(?P<module>\w+)/(?P<name>\w+?)"
                    r"(?P<bias>_bias)?$")
_STACKED = re.compile(r"^\w*layers/(?!\d+/)")


def _rank(*key) -> int:
  return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")


def select(paths: Iterable[str], seed: int = 0, round: int = 0  # pylint: disable=redefined-builtin
           ) -> frozenset[str]:
  """The frozen paths (`/`-joined) of HFT's draw for `seed` and `round`; see the module doc."""
  paths = list(paths)
  if any(_STACKED.match(p) for p in paths):
    raise errors.ConfigError(
        "train.trainable=hft: the model has scanned layers (model.scan_layers=True), whose "
        "parameters stack every layer along one axis; HFT freezes a different half in each layer",
        hint="set model.scan_layers=False for HFT")
  if any(re.search(r"\w_lora\b", p) for p in paths):
    raise errors.ConfigError(
        "train.trainable=hft with LoRA adapters (model.lora_rank > 0): HFT trains half of the "
        "model's own weights; set model.lora_rank=0 or train.trainable=lora")
  # groups[(stack, layer, module)] = {member name: [paths]}
  groups: dict[tuple[str, int, str], dict[str, list[str]]] = {}
  for p in paths:
    m = _LAYER.match(p)
    if not m:
      continue
    module, name = m["module"], m["name"]
    if not ((module in ATTENTION_MODULES and name in ATTENTION)
            or (module == FFN_MODULE and name in FFN)):
      continue
    groups.setdefault((m["stack"], int(m["i"]), module), {}).setdefault(name, []).append(p)
  # Per stack, the layers whose odd-sized groups freeze the larger share: floor(L / 2) of them.
  layers: dict[str, list[int]] = {}
  for stack, i, _ in groups:
    layers.setdefault(stack, [])
    if i not in layers[stack]:
      layers[stack].append(i)
  more = {stack: set(sorted(ids, key=lambda i, s=stack: (_rank(seed, round, s, i, "half"), i))
                     [:len(ids) // 2]) for stack, ids in layers.items()}
  frozen = set()
  for (stack, i, module), members in groups.items():
    n = len(members)
    k = n // 2 + (n % 2 if i in more[stack] else 0)
    order = sorted(members, key=lambda name: (_rank(seed, round, stack, i, module, name), name))
    for name in order[:k]:
      frozen.update(members[name])
  frozen.update(p for p in paths if "prompt" in p)
  return frozenset(frozen)


def regexes(paths: Iterable[str], seed: int = 0, round: int = 0  # pylint: disable=redefined-builtin
            ) -> list[str]:
  """The draw as `train.trainable` path regexes (each trainable path, anchored): a starting point
  for a hand-written per-round schedule."""
  paths = list(paths)
  frozen = select(paths, seed, round)
  return [f"^{re.escape(p)}$" for p in paths if p not in frozen]


def parse(spec: str) -> int | None:
  """The round of an `hft` / `hft:<round>` spec item, or None if it is not one."""
  if spec == "hft":
    return 0
  m = re.fullmatch(r"hft:(\d+)", spec)
  return int(m.group(1)) if m else None
