"""Stages `fetch` and `prepare`: the corpora from sources.tsv and fetch.tables to clean, split, accounted data."""
