"""One process of the two-host lm-eval test: joins via the JAX_* variables, loads the model onto
a mesh over both processes' devices (parameters sharded across them), and runs the harness:
process 0 leads, process 1 follows its batches (see test_lm_eval). Each writes what it got."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mtjax.parallel import distributed

assert distributed.initialize(), "JAX_COORDINATOR_ADDRESS etc. should start multi-process"

import jax

from mtjax.eval import infer, lm_eval


def main(model_dir: str, include_path: str, out: str) -> None:
  distributed.BROADCAST_PART = 512  # batches travel in several key-value parts
  model = infer.load(model_dir, mesh_shape=(2, 2, 1), devices=jax.devices())
  engine = lm_eval.Engine(model, batch_size=4)
  assert engine.multihost and engine.leader == (jax.process_index() == 0)
  results = lm_eval.evaluate(model, ["tiny_mc", "tiny_gen", "tiny_ppl"], num_fewshot=1,
                             include_path=include_path, engine=engine)
  with open(f"{out}.{jax.process_index()}.json", "w") as f:
    json.dump({"rows": lm_eval.rows(results), "shapes": len(engine.shapes)}, f)


if __name__ == "__main__":
  main(*sys.argv[1:4])
