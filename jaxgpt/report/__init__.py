"""Reporting a run: the progress line and MFU (progress), TensorBoard and profiler traces (board), charts
(plot)."""
