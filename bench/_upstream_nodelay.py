"""tools/demo_upstream.py with TCP_NODELAY on its connections, for latency measurements.

The demo upstream writes a response's headers and its body with two send() calls on a
keep-alive connection. With Nagle's algorithm on, the second waits for the peer's delayed
ACK, which adds about 40 ms to every proxied request and would swamp every latency figure.
This runs the unchanged tool with socketserver's `disable_nagle_algorithm` switched on.

    python -m bench._upstream_nodelay --port PORT
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "demo_upstream.py"

if __name__ == "__main__":
    tool = runpy.run_path(str(TOOL), run_name="demo_upstream")
    tool["Handler"].disable_nagle_algorithm = True
    sys.exit(tool["main"]())
