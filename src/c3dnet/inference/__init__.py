"""Running models: backends (PyTorch, ONNX Runtime), the clip runner, clip plans, prediction, the feature recipe.

`backends.load_backend` loads any weights into a `Backend`; `runner.ClipRunner` runs one of its outputs;
`clips.ClipPlan` and `clips.clip_batches` cut a video's sliding clips; `prediction` gives 10-clip predictions and
per-clip timelines; `recipe.FeatureRecipe` is what a feature extraction computes.
"""
