"""Real processes for tests, benchmarks and `make run`: one launcher for the whole stack.

    paths.py     where the repo's own files are (envoy/*.yaml, tools/demo_upstream.py)
    net.py       loopback ports, readiness probes, proxy-free HTTP GET
    process.py   Child: one started process, its log, stopped only by its own pid
    redis.py     redis-server on a free loopback port
    cli.py       the `keyguard` command: as a subprocess, or `keys` in-process
    keyguard.py  `keyguard serve` (TCP, Unix socket, workers) and its gRPC health
    envoy.py     Envoy running the repo's envoy/*.yaml with only its addresses rewritten
    upstream.py  the demo LLM API (tools/demo_upstream.py)
    stack.py     Stack: the four together, read from or rendered onto an Envoy config

Importable from the repository root by `tests/`, `bench/` and `tools/devstack.py`; it
imports from none of them.
"""
