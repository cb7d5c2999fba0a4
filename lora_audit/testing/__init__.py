"""Generators of test fixtures: synthetic LoRA files in every common layout (no model behind them)."""
