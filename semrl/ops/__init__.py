"""Operations around the pipeline: the Prefect flows (the training stages run `expansion`; the deployment runs `experiment`), the deployment on a work pool, and `semrl check`."""
