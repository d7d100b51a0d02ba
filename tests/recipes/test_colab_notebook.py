"""notebooks/colab_quickstart.ipynb runs top to bottom (tiny settings) and produces its plot."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_quickstart.ipynb")


def test_colab_quickstart_executes(tmp_path, monkeypatch, worker_env):
  # The kernel inherits this environment: tiny settings, this checkout, the workers' JAX setup.
  for key, value in {**worker_env, "MTJAX_NOTEBOOK_TINY": "1",
                     "MTJAX_NOTEBOOK_DIR": str(tmp_path)}.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "trained 2 steps" in text and "colab_parity {'accuracy'" in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is shown
  assert os.path.getsize(tmp_path / "quickstart.png") > 1000  # and saved
  assert os.path.exists(tmp_path / "run" / "eval_results.json")
