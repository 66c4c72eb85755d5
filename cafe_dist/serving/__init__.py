"""Trained models outside training: export a checkpoint, score rows, serve through MLflow."""
