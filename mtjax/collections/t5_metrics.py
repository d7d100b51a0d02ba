"""T5's metric functions per GLUE / SuperGLUE config (`glue_utils.GLUE_METRICS` /
`SUPERGLUE_METRICS`), in a module of its own so other collections (T0 scores its GLUE and
SuperGLUE templates with them) can use the table without registering T5's tasks.
"""

from __future__ import annotations

from typing import Callable

from mtjax.eval import metrics


def _metric_table() -> dict[tuple[str, str], list[Callable]]:
  acc = metrics.accuracy
  f1_acc = [metrics.f1_score_with_invalid, acc]
  glue = {"cola": [metrics.matthews_corrcoef], "sst2": [acc], "mrpc": f1_acc,
          "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef], "qqp": f1_acc,
          "mnli": [acc], "mnli_matched": [acc], "mnli_mismatched": [acc], "qnli": [acc],
          "rte": [acc], "wnli": [acc], "ax": []}
  super_glue = {"boolq": [acc], "cb": [metrics.mean_multiclass_f1(num_classes=3), acc],
                "copa": [acc],
                "multirc": [metrics.multirc_f1_over_all_answers,
                            metrics.mean_group_metric(metrics.all_match)],
                "record": [metrics.deduplicate_metric(metrics.squad)], "rte": [acc],
                "wic": [acc], "axb": [], "axg": []}
  table = {("glue", k): v for k, v in glue.items()}
  table.update({("super_glue", k): v for k, v in super_glue.items()})
  return table


METRICS = _metric_table()


def metric_fns(dataset: str, config: str) -> list[Callable] | None:
  """T5's metric functions for a GLUE / SuperGLUE config (`glue_utils.GLUE_METRICS` /
  `SUPERGLUE_METRICS`), e.g. `metric_fns("glue", "cola")`; None for a config T5 has none for
  (wsc, wsc.fixed). Test-only configs (ax, axb, axg) have [], as in T5. Multirc's and record's
  metrics need T5's postprocessors (`postprocess_fn`): they read dicts, not class ids."""
  found = METRICS.get((dataset, config))
  return None if found is None else list(found)
