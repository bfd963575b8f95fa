"""Where the repository's own files are: every launcher runs these, never a copy."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Executables installed next to this interpreter (the venv): keyguard, envoy.
VENV_BIN = Path(sys.executable).parent
ENVOY_DIR = REPO / "envoy"
DEFAULT_CONFIG = ENVOY_DIR / "envoy.yaml"
UNIX_CONFIG = ENVOY_DIR / "envoy-unix.yaml"
MULTIWORKER_CONFIG = ENVOY_DIR / "envoy-multiworker.yaml"
DEMO_UPSTREAM = REPO / "tools" / "demo_upstream.py"
