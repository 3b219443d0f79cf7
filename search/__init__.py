"""Sweeps: space files -> Ray Tune + Optuna experiments logged to MLflow, and the `uvlm` command line."""
