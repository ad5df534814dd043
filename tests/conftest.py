"""Shared test settings: hypothesis profiles.

`default`: random examples, no per-example deadline (the machines running the suite are
shared, so wall-clock deadlines would only make tests flaky). `ci` (loaded when the CI
environment variable is set): derandomized, so a CI run is reproducible, still no deadline.
Select another with `pytest --hypothesis-profile=NAME`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from broker import Mosquitto, mosquitto_binary

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private mosquitto on a free loopback port (tests/broker.py), killed after the test.

    Skipped only where the binary is missing; `scripts/setup.sh` installs it, so CI runs it.
    """
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/setup.sh)")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
