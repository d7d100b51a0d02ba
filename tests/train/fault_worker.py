"""`python -m tests.train.fault_worker STEP:KIND <mtjax command and args>`: the CLI with a fault.

KIND is SIGKILL or SIGTERM (sent to this process right after step STEP, before its checkpoint
decision, as a preemption or a crash would land) or nan (the parameters become NaN before step
STEP runs). The fault is a `mtjax.train.hooks.LoopHook` installed for this process only, so the
production loop carries no test switch; the run's config is the same as an unfaulted run's.
Used by tests/train/test_resume.py and tests/cloud/test_gcs_run.py.
"""

import os
import signal
import sys


def fault_hook(spec: str):
  import jax  # pylint: disable=g-import-not-at-top

  from mtjax.train import hooks  # pylint: disable=g-import-not-at-top

  step, kind = spec.split(":")
  step = int(step)
  if kind not in ("SIGKILL", "SIGTERM", "nan"):
    raise SystemExit(f"fault_worker: unknown fault kind {kind!r}")

  class Fault(hooks.LoopHook):

    def before_step(self, s, params):
      if kind == "nan" and s == step:
        return jax.tree.map(lambda x: x * float("nan"), params)
      return params

    def after_step(self, s):
      if kind != "nan" and s == step:
        os.kill(os.getpid(), getattr(signal, kind))  # SIGTERM's handler runs right here

  return Fault()


def main(argv):
  from mtjax import cli  # pylint: disable=g-import-not-at-top
  from mtjax.train import hooks  # pylint: disable=g-import-not-at-top

  hooks.install(fault_hook(argv[0]))
  cli.main(argv[1:])


if __name__ == "__main__":
  main(sys.argv[1:])
