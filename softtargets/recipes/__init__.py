"""Recipes built on the library: complete experiments with their models and training loops."""
