"""README.md's commands and the first docs pages', run as written (tests/helpers/doc_commands.py).

The pages from ``CHAIN_STARTS`` on run in tests/test_docs_commands.py, in a scratch folder of
their own, so the two xdist workers share the documented commands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.doc_commands import (
    CHAINS,
    Command,
    make_scratch,
    make_shell_env,
    run_as_written,
    unknown_and_stale,
)

pytestmark = pytest.mark.slow

CHAIN = CHAINS[0]


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    unknown, stale = unknown_and_stale()
    assert not unknown, f"documented commands the harness does not know: {unknown}"
    assert not stale, f"harness entries no longer in the docs: {stale}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return make_scratch(tmp_path_factory)


@pytest.fixture(scope="module")
def shell_env() -> dict[str, str]:
    return make_shell_env(CHAIN)


@pytest.mark.parametrize("command", CHAIN, ids=[c.id for c in CHAIN])
def test_documented_command_runs_as_written(command: Command, scratch: Path, shell_env):
    run_as_written(command, scratch, shell_env)
