"""PromptSource rendering as promptsource/templates.py defines it: its Jinja filters and globals,
its per-expression truncation, `|||` inside values, and the seeded `choice`."""

import hashlib
import json
import random

import pytest

from mtjax.data import promptsource
from mtjax.data.promptsource import PromptTemplate


def _render(jinja, example, answer_choices=None, **kwargs):
  return PromptTemplate("t", jinja, answer_choices, **kwargs).render(example)


def test_highlight_wraps_in_promptsources_span():
  out = _render("{{ premise | highlight }} ||| {{ 7 | highlight }}", {"premise": "It rained."})
  assert out["inputs"] == "<span style='color: #F08080'>It rained.</span>"
  assert out["targets"] == "<span style='color: #F08080'>7</span>"


def test_most_frequent_lists_the_ties_in_first_seen_order():
  out = _render('{{ answers | most_frequent | join(", ") }} ||| {{ [] | most_frequent }}',
                {"answers": ["b", "a", "b", "a", "c"]})
  assert (out["inputs"], out["targets"]) == ("b, a", "None")
  assert _render("{{ xs | most_frequent }}", {"xs": [3, 1, 3]})["inputs"] == "[3]"


def test_zip_global():
  out = _render("{% for q, a in zip(qs, answers) %}{{ q }}={{ a }};{% endfor %}",
                {"qs": ["x", "y"], "answers": ["1", "2"]})
  assert out["inputs"] == "x=1;y=2;"


def _first_draw(example, items, skip=0):
  """What the seeded generator draws, computed here from its definition: sha256 of the example
  as sorted JSON seeds random.Random (pinned: changing it changes every cached choice)."""
  rng = random.Random(hashlib.sha256(json.dumps(example, sort_keys=True).encode()).digest())
  for _ in range(skip):
    rng.choice(items)
  return rng.choice(items)


def test_choice_filter_and_global_draw_from_the_example_seeded_generator():
  names = [f"n{i}" for i in range(20)]
  picks = set()
  for i in range(8):
    example = {"id": i, "names": names}
    as_filter = _render("{{ names | choice }}", example)["inputs"]
    as_global = _render("{{ choice(names) }}", example)["inputs"]
    assert as_filter == as_global == _first_draw(example, names)
    assert _render("{{ names | choice }}", example)["inputs"] == as_filter  # reproducible
    picks.add(as_filter)
  assert len(picks) > 1  # seeded per example, not one constant draw
  # One stream per render: answer choices draw first, then the template.
  example = {"id": 3, "names": names}
  out = _render("{{ names | choice }} ||| {{ answer_choices[0] }}", example,
                "{{ names | choice }} ||| other")
  assert out["answer_choices"] == [_first_draw(example, names), "other"]
  assert out["inputs"] == _first_draw(example, names, skip=1)
  assert out["targets"] == out["answer_choices"][0]


def test_long_values_are_truncated_as_promptsource_does():
  words = " ".join(["abcd"] * 700)  # 3,499 characters
  out = _render("{{ text }} ||| {{ short }}", {"text": words, "short": "ok"})
  # Jinja's truncate(2048), leeway 5: cut to 2045, back to the last space, then "...".
  assert out["inputs"] == " ".join(["abcd"] * 409) + "..."
  assert len(out["inputs"]) == 2047 and out["targets"] == "ok"
  # Up to 2048 + 5 characters stay whole; one more is cut.
  assert _render("{{ t }}", {"t": "x" * 2053})["inputs"] == "x" * 2053
  assert _render("{{ t }}", {"t": "x" * 2054})["inputs"] == "x" * 2045 + "..."
  # Turned off, and the answer_choices template (which PromptSource never truncates).
  assert _render("{{ text }}", {"text": words}, truncate=None)["inputs"] == words
  # (Jinja drops the last word of the cut even when it is whole: s[:9] "abcd abcd" -> "abcd")
  assert _render("{{ text }}", {"text": words}, truncate=12)["inputs"] == "abcd..."
  assert _render("x", {"text": words}, "{{ text }} ||| no")["answer_choices"] == [words, "no"]
  # Whitespace control survives the rewrite.
  assert _render("a {{ t -}}   \n b", {"t": "x" * 3000})["inputs"] == "a " + "x" * 2045 + "...b"


def test_truncation_rewrite_is_promptsources_textual_one():
  assert promptsource.truncated("{{a}} and {{ b -}}", 10) == (
      "{{a | string | truncate(10) }} and {{ b  | string | truncate(10) -}}")


def test_separator_inside_a_value_does_not_split():
  out = _render("{{ premise }} ||| {{ answer_choices[label] }}",
                {"premise": "a ||| b", "label": 1}, "x ||| y")
  assert (out["inputs"], out["targets"]) == ("a ||| b", "y")
  out = _render("{{ q }} ||| {{ answer_choices[1] }}", {"q": "?", "opt": "u ||| v"},
                "{{ opt }} ||| w")
  assert out["answer_choices"] == ["u ||| v", "w"] and out["targets"] == "w"


def test_answer_choices_is_none_without_a_choices_template_and_reserved_in_records():
  out = _render("{{ q }} ||| {{ answer_choices is none }}", {"q": "hi"})
  assert out == {"inputs": "hi", "targets": "True", "answer_choices": []}
  with pytest.raises(ValueError, match=r"template 't'.*field 'answer_choices'.*map_record"):
    _render("{{ q }}", {"q": "hi", "answer_choices": ["a"]})


def test_template_errors_name_template_and_variable():
  with pytest.raises(ValueError, match=r"template 't': UndefinedError: 'hypothesis' is "
                                       r"undefined"):
    _render("{{ premise }} {{ hypothesis }}", {"premise": "p"})
  with pytest.raises(ValueError, match=r"template 't', answer_choices: UndefinedError"):
    _render("{{ premise }}", {"premise": "p"}, "{{ nope }} ||| b")
  with pytest.raises(ValueError, match=r"template 't': IndexError"):
    _render("{{ [] | choice }}", {})


def test_load_passes_truncation_and_reads_early_list_choices(tmp_path):
  path = tmp_path / "templates.yaml"
  path.write_text("dataset: d\ntemplates:\n  a1: !Template\n    answer_choices:\n    - 'yes'\n"
                  "    - 'no'\n    id: a1\n    jinja: '{{ s }} ||| {{ answer_choices[label] }}'\n"
                  "    name: n\n    reference: ''\n")
  (t,) = promptsource.load(str(path))
  assert (t.answer_choices, t.truncate) == ("yes ||| no", 2048)
  assert t.render({"s": "q", "label": 1})["targets"] == "no"
  assert promptsource.load(str(path), truncate=None)[0].truncate is None
  with pytest.raises(ValueError, match=r"truncate=0"):
    promptsource.load(str(path), truncate=0)
