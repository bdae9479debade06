"""The `longquant` exit codes (docs/cli.md): what a CI job branches on."""

PASSED = 0  # every selected test passed (allowed not-gated cases skipped)
REGRESSED = 1  # a regression, or a planned cell that was not gated and not allowed (never counted as passed)
CONFIG_ERROR = 2  # a usage or config error, missing baselines, or a plan that selects no test
INFRASTRUCTURE_ERROR = 3  # an engine crashed or could not start, a checkpoint could not be made: no verdict
INTERRUPTED = 130  # Ctrl-C / SIGTERM: finished cells are kept, a rerun resumes
