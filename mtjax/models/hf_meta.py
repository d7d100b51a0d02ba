"""What a Hugging Face export needs beyond weights, recorded in the run dir at train time.

(Being built for issue 15: special token ids, lengths, generation config, tokenizer files.)
"""

from __future__ import annotations


def record(setup, run_dir: str) -> None:
  """Records the run's tokenizer and special-token facts in `run_dir` (process 0 only)."""
  del setup, run_dir
