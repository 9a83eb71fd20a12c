"""Calibration data, FP16/INT8 conversion and accuracy budgets."""
