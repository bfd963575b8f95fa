"""Metering: what a response says it used (``usage``), and later its settlement."""
