"""The README's code and commands stay true."""

import os
import re

import jax.numpy as jnp
import pytest

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
    command = re.search(r"^pip install -e '\.\[dev\]' && (python -m pytest[^\n]*)$",
                        text, re.M)
    assert command, "README lost its test command"
    for config in re.findall(r"--config=(configs/\w+\.py)", text):
        assert os.path.exists(os.path.join(REPO, config)), config
    with open(os.path.join(REPO, ".ci", "run")) as f:
        # CI runs exactly the README's test command.
        assert re.search(rf"^{re.escape(command.group(1))}$", f.read(), re.M)


def _own_model_blocks():
    blocks = re.findall(r"```python\n(# (examples/own_model_\w+\.py).*?)```",
                        _readme(), re.S)
    return {path: code for code, path in blocks}


def test_own_model_examples_are_the_example_files():
    blocks = _own_model_blocks()
    assert sorted(blocks) == ["examples/own_model_linen.py",
                              "examples/own_model_nnx.py"]
    for path, code in blocks.items():
        with open(os.path.join(REPO, path)) as f:
            assert f.read() == code, f"README and {path} differ"


@pytest.mark.parametrize("path", ["examples/own_model_linen.py",
                                  "examples/own_model_nnx.py"])
def test_own_model_example_finds_a_ticket(path, capsys):
    namespace = {"__name__": "__main__"}
    exec(compile(_own_model_blocks()[path], path, "exec"), namespace)  # noqa: S102
    assert bool(namespace["eb_state"].converged)
    ticket = namespace["ticket"]
    # Every BatchNorm, including the norm_proj shortcut, is in the ticket.
    assert "block/norm_proj/scale" in ticket and len(ticket) == 4
    kept = sum(int(m.sum()) for m in ticket.values())
    assert 0 < kept < sum(m.size for m in ticket.values())
    assert "ticket found: True" in capsys.readouterr().out
