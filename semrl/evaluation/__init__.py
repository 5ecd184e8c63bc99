"""Stages `evaluate@<task>`, `transfer` (scoring half) and `report`: metrics, evaluation, the tax report."""
