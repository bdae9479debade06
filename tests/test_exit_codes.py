"""The `longquant run` exit codes from pytest's status and the run's summary (docs/cli.md); end to end with the real
model in tests/test_cli_gate.py."""

import pytest

from longquant_checks.cli.gate import exit_code


def summary(**counts):
    not_gated = counts.pop("not_gated", [])
    return {"counts": counts, "not_gated": not_gated}


@pytest.mark.parametrize("status, found, code", [
    (0, summary(passed=5), 0),
    (1, summary(passed=4, regressed=1), 1),
    (1, summary(passed=4, error=1), 3),  # an engine crash: no verdict, whatever else failed
    (1, summary(regressed=1, error=2), 3),
    (1, summary(error=2, **{"missing baselines": 2}), 2),  # only missing baselines: a usage problem
    (1, summary(regressed=1, error=1, **{"missing baselines": 1}), 1),
    (1, summary(**{"not gated": 1}, not_gated=[{"allowed": False}]), 1),  # what did not run is not a pass
    (0, summary(passed=3, **{"not gated": 1}, not_gated=[{"allowed": True}]), 0),
    (1, None, 1),  # a failure the summary does not explain is not a pass
    (2, None, 2),  # pytest's 'interrupted' is a collection error here (a Ctrl-C at the command is 130)
    (3, None, 3),
    (4, None, 2),
    (5, None, 2),  # no tests selected
    (0, None, 2),  # pytest passed, but no gate test reported anything: nothing was gated
])
def test_exit_code(status, found, code):
    assert exit_code(status, found) == code
