"""keyguard's benchmark harness: `python -m bench [--quick] [--out DIR]` (see bench/__main__.py)."""
