"""Real processes for tests: the harness's launchers, under the names tests import.

Every process is started and stopped by `harness` (see harness/__init__.py); this module
only keeps the integration tests' imports stable.
"""

from __future__ import annotations

from harness.cli import keyguard_cmd, run_cli
from harness.keyguard import KeyguardServer, running_keyguard
from harness.net import free_port, wait_for_port
from harness.paths import REPO
from harness.process import stop_process
from harness.redis import RedisServer, redis_server_binary, running_redis

__all__ = [
    "REPO",
    "KeyguardServer",
    "RedisServer",
    "free_port",
    "keyguard_cmd",
    "redis_server_binary",
    "run_cli",
    "running_keyguard",
    "running_redis",
    "stop_process",
    "wait_for_port",
]
