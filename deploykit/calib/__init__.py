"""Calibration and precision: calibration data for an exported artifact (:mod:`.data`), the
TensorRT ≤ 10 calibration cache written from a Q/DQ graph (:mod:`.cache`)."""
