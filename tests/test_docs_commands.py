"""The commands of the later docs pages and notebooks/README.md, run as written.

The second chain of tests/helpers/doc_commands.py: from ``CHAIN_STARTS[0]`` on, in a scratch
folder of its own, beside tests/test_readme_commands.py in the other xdist worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.doc_commands import CHAINS, Command, make_scratch, make_shell_env, run_as_written

pytestmark = pytest.mark.slow

CHAIN = CHAINS[1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return make_scratch(tmp_path_factory)


@pytest.fixture(scope="module")
def shell_env() -> dict[str, str]:
    return make_shell_env(CHAIN)


@pytest.mark.parametrize("command", CHAIN, ids=[c.id for c in CHAIN])
def test_documented_command_runs_as_written(command: Command, scratch: Path, shell_env):
    run_as_written(command, scratch, shell_env)
