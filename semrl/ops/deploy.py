"""The deployment `experiment/<deployment.name>` on a Prefect server: registered to a process work pool
(`semrl deploy`) for `semrl worker` to run, and its state in words (`semrl status`): schedule, workers, and
why a scheduled run is Late."""
from __future__ import annotations

from pathlib import Path

from semrl import SemrlError
from semrl.core.config import Config

FLOW_NAME = "experiment"


def require_server() -> None:
    """A deployment lives on a Prefect server: `semrl up`'s, or one Prefect's settings name."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise SemrlError("no Prefect server: start one with `semrl up` (or set PREFECT_API_URL, e.g. "
                         "`prefect config set PREFECT_API_URL=...`)")


def _parameters(cfg: Config, params: Path) -> dict:
    d = cfg.deployment
    return {"tasks": d.tasks, "seeds": d.seeds, "profile": d.profile, "params_path": str(params), "evaluate": d.evaluate}


def deploy(cfg: Config, params: Path, name: str | None = None, cron: str | None = None) -> str:
    """Register the deployment to the process work pool deployment.work_pool (created when missing); a
    worker runs each flow run in this project folder. Returns the deployment's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from semrl.ops.flows import experiment

    require_server()
    d = cfg.deployment
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(d.work_pool)
            if pool.type != "process":
                raise SemrlError(f"work pool {d.work_pool} is of type {pool.type}, not process "
                                 "(deployment.work_pool: choose another name)")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=d.work_pool, type="process"))
    source = experiment.from_source(source=str(Path.cwd().resolve()), entrypoint="flows/experiment.py:experiment")
    dep_id = source.deploy(name=name or d.name, work_pool_name=d.work_pool, cron=cron or d.cron, tags=["semrl"],
                           parameters=_parameters(cfg, params), build=False, push=False, print_next_steps=False,
                           ignore_warnings=True,  # a process pool is the point here, not a local-dev slip
                           description="the pipeline as a DVC experiment (dvc exp run --temp): cold start -> "
                                       "{strong SFT, GRPO}, evaluation and the report")
    return str(dep_id)


def deployment_status(cfg: Config) -> list[str]:
    """Each deployment of the `experiment` flow in words: its schedule and where its runs execute; Late
    runs with the reason (no worker on its pool, no `semrl serve` process)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        return ["deployment  no Prefect server (`semrl up`): a schedule only runs through one"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName,
                                                FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName)
    from prefect.client.schemas.sorting import FlowRunSort

    lines = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
        if not deployments:
            return [f"deployment  none of flow {FLOW_NAME} on {api} (`semrl deploy`, or `semrl serve`)"]
        for dep in sorted(deployments, key=lambda d: d.name):
            def runs(state: str) -> list:
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[state]))),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)

            crons = ", ".join(f"{getattr(s.schedule, 'cron', s.schedule)}{'' if s.active else ' (paused)'}"
                              for s in client.read_deployment_schedules(dep.id)) or "no schedule"
            full = f"{FLOW_NAME}/{dep.name}"
            lines.append(f"deployment  {full}: {crons}; " + (f"work pool {dep.work_pool_name}" if dep.work_pool_name
                                                              else "served by a `semrl serve` process"))
            hint = ""
            if dep.work_pool_name:
                online = [w for w in client.read_workers_for_work_pool(dep.work_pool_name)
                          if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
                lines.append(f"  workers   {len(online)} online in work pool {dep.work_pool_name}"
                             + (f" ({', '.join(w.name for w in online)})" if online else ""))
                if not online:
                    hint = f"no worker polls work pool {dep.work_pool_name}: start one with `semrl worker`"
            elif str(getattr(dep.status, "value", dep.status)).upper() != "READY":
                hint = "no `semrl serve` process runs it: start `semrl serve` (or `semrl deploy` + `semrl worker`)"
            late, due = runs("Late"), runs("Scheduled")
            if due:
                lines.append(f"  next run  {due[0].expected_start_time:%Y-%m-%d %H:%M %Z} ({due[0].name})")
            if late:
                lines.append(f"  late      {len(late)} scheduled run(s) Late, the oldest due "
                             f"{late[0].expected_start_time:%Y-%m-%d %H:%M %Z}: "
                             + (hint or "a runner is up; they start when it next polls"))
            elif hint:
                lines.append(f"  note      {hint}; scheduled runs will go Late")
    return lines
