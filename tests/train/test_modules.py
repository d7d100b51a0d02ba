"""`data.modules` resolve from the working directory, as `python -m` would."""

import sys

import pytest

from mtjax.data import modules


def test_module_in_working_directory_is_imported(tmp_path, monkeypatch):
  (tmp_path / "my_registry_mod.py").write_text("REGISTERED = True\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  modules.import_modules(["my_registry_mod"])
  assert sys.modules["my_registry_mod"].REGISTERED


def test_missing_module_is_named():
  with pytest.raises(ImportError, match="data.modules.*no_such_registry_mod"):
    modules.import_modules(["no_such_registry_mod"])
