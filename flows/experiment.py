"""Prefect entry point for the `experiment` flow (the pipeline as a DVC experiment: what the deployment
`experiment/<deployment.name>` runs); logic in semrl/ops/flows.py.

    semrl serve                 # serve the deployment in the foreground, or
    semrl deploy && semrl worker   # register it to the work pool, run its flow runs with a worker
"""
from semrl.ops.flows import experiment  # noqa: F401  (the deployment entry point: flows/experiment.py:experiment)
