"""The run configs (python and gin twins), experiment recipes and sweeps that ship with mtjax.

Installed as `mtjax.configs`: `mtjax train --config=quickstart` and `--gin_file=quickstart.gin`
find them by name without a clone (`mtjax/config/packaged.py`).
"""
