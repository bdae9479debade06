"""Project-wide pytest configuration: hypothesis profiles for tests/ (the `ci` profile is used when CI=true).

The demo gate (`python -m pytest fixtures`, README command 1) installs without the dev extra, so hypothesis may be
missing there: it is only needed by tests/.
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the demo gate's environment
    settings = None

if settings is not None:
    settings.register_profile(
        "default", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile(
        "ci", deadline=None, max_examples=30, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "default"))
