"""notebooks/colab_quickstart.ipynb runs top to bottom, install cell included: the kernel is a
fresh venv without mtjax (tests/wheel_env.py), and the notebook pip-installs the wheel built
from this checkout (MTJAX_PIP_SPEC; no network: its dependencies are already there). Tiny
settings; it produces its plot."""

import json
import os

import pytest

from tests import wheel_env

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_quickstart.ipynb")


def test_colab_quickstart_executes(tmp_path, tmp_path_factory, monkeypatch, worker_env):
  wheel = wheel_env.session_wheel(tmp_path_factory)
  venv = str(tmp_path / "venv")
  python = wheel_env.fresh_venv(venv)
  # A kernel spec that starts the fresh venv's Python (found through JUPYTER_PATH).
  spec_dir = tmp_path / "jupyter" / "kernels" / "mtjax-wheel"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "mtjax wheel", "language": "python"}))
  work = tmp_path / "work"
  work.mkdir()
  # The kernel inherits this environment: tiny settings and the workers' JAX setup, but not
  # their PYTHONPATH (the checkout): mtjax must come from the install cell.
  monkeypatch.delenv("PYTHONPATH", raising=False)
  for key, value in {**worker_env, "MTJAX_NOTEBOOK_TINY": "1", "MTJAX_NOTEBOOK_DIR": str(work),
                     "MTJAX_PIP_SPEC": wheel, "PIP_NO_INDEX": "1",
                     "JUPYTER_PATH": str(tmp_path / "jupyter")}.items():
    if key != "PYTHONPATH":
      monkeypatch.setenv(key, value)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="mtjax-wheel",
                          resources={"metadata": {"path": str(work)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  errors = [o for o in outputs if o.get("output_type") == "error"]
  assert not errors, errors
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert f"pip install mtjax[recipes] @ file://{wheel}" in text  # CPU: no accelerator extra
  assert f"mtjax from {venv}" in text  # the wheel's copy, installed by the cell
  assert "trained 2 steps" in text and "colab_parity {'accuracy'" in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is shown
  assert os.path.getsize(work / "quickstart.png") > 1000  # and saved
  assert os.path.exists(work / "run" / "eval_results.json")
