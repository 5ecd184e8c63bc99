"""The foundation every stage uses: the typed config, task and method records, files, text rules, MLflow
tracking and the local servers it logs to."""
