"""Stages `coldstart@<task>`, `sft@<task>`, `grpo@<task>` and `transfer` (training half): TRL trainers per method record, rewards, tau."""
