"""The TensorRT engine stage: ``deploykit build`` (:mod:`.build`) and the optimisation-profile shapes
it takes from a manifest (:mod:`.profiles`, which the Triton repository writer shares)."""
