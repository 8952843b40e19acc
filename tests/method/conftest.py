"""Release fixtures: an invalid ``DUPL_RELEASE_FIXTURES`` stops the run with one line naming it."""

import pytest
import release_fixture as rf


def pytest_configure(config):
    reason = rf.invalid_env_reason()
    if reason:
        raise pytest.UsageError(reason)
