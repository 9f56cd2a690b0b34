"""The README's code and commands stay true."""

import os
import re

import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def test_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert int(namespace["eb_state"].epoch) >= 1
    assert all(m.dtype == jnp.bool_ for m in namespace["ticket"].values())


def test_setup_commands_name_existing_files():
    text = _readme()
    assert "python launch.py --config=configs/quickstart.py" in text
    assert "python -m pytest -q" in text
    for config in re.findall(r"--config=(configs/\w+\.py)", text):
        assert os.path.exists(os.path.join(REPO, config)), config
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "python -m pytest -q" in f.read()
