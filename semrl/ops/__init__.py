"""Operations around the pipeline: the Prefect flow (`train@<task>` runs it) and `semrl check`."""
