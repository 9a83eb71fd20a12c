"""``deploykit demo``: the whole pipeline on the bundled demo models (:mod:`.run`), FP32 -> FP16 / INT8
with accuracy budgets, speed and TensorRT engines where available (:mod:`.precision`)."""
