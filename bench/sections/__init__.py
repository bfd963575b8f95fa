"""One module per benchmark section; each `run(rig, ...)` returns its part of the results."""
