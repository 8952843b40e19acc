"""Release fixtures: an invalid ``DUPL_RELEASE_FIXTURES`` stops the run with one line naming it."""

import release_fixture as rf
import pytest


def pytest_configure(config):
    reason = rf.invalid_env_reason()
    if reason:
        raise pytest.UsageError(reason)
