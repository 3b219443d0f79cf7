"""The unified VLM, its data, scorers and training loop (run by Ray Train)."""
