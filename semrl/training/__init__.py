"""Stages `train@<task>` and `transfer` (training half): TRL trainers per method record, rewards, tau."""
