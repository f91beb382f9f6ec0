"""The user's Preprocess code: its own package per version, hooks wrapped once, model_endpoint, the clearml stand-in."""
