"""Earlier scoring runs: what the last one of a model version read, for incremental scoring.

The state of incremental scoring is the MLflow scoring run itself: every scoring run already
records the model name and version, the output table and the Delta version of every
modality table it read (params ``table_version.<modality>``), and a run is ``FINISHED`` only
once its rows are committed (an exception inside the run marks it ``FAILED``). So the
versions to compare against are those of the newest finished scoring run of the same model
version and output table; a failed run is never a base, which leaves the recorded versions
as they were. (A separate Delta state table could not be committed in the same transaction
as the scores either, and would be one more table to keep consistent with the registry.)
"""

from __future__ import annotations

from dataclasses import dataclass

from mmgmm_spark.tracking.config import TrackingConfig

TABLE_VERSION_PREFIX = "table_version."
MODE_PARAM = "scoring.mode"
BASE_RUN_PARAM = "scoring.base_run_id"
NO_BASE = "none"


@dataclass(frozen=True)
class ScoringRunRecord:
    """A finished scoring run: its id and the Delta version of each modality table read."""

    run_id: str
    versions: dict[str, int]


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _record(run) -> ScoringRunRecord:
    params = run.data.params
    versions = {key.removeprefix(TABLE_VERSION_PREFIX): int(value)
                for key, value in params.items() if key.startswith(TABLE_VERSION_PREFIX)}
    return ScoringRunRecord(run.info.run_id, versions)


def last_scoring_run(config: TrackingConfig, model_name: str, model_version: str,
                     output_table: str) -> ScoringRunRecord | None:
    """The newest ``FINISHED`` scoring run of this model version into ``output_table``."""
    run = _newest_finished_run(config, f"params.model_name = {_quoted(model_name)} and "
                               f"params.model_version = {_quoted(str(model_version))} and "
                               f"params.output_table = {_quoted(output_table)}")
    return None if run is None else _record(run)


def recorded_base(config: TrackingConfig, scoring_run_id: str) -> ScoringRunRecord | None:
    """The base an (incremental) scoring run recorded, for re-running it: None for a full
    run."""
    client = config.client()
    base = client.get_run(scoring_run_id).data.params.get(BASE_RUN_PARAM, NO_BASE)
    return None if base == NO_BASE else _record(client.get_run(base))


def latest_scoring_run(config: TrackingConfig, output_table: str):  # -> mlflow Run | None
    """The newest ``FINISHED`` scoring run into ``output_table``, of any model version."""
    return _newest_finished_run(config, f"params.output_table = {_quoted(output_table)}")


def _newest_finished_run(config: TrackingConfig, condition: str):  # -> mlflow Run | None
    """The newest ``FINISHED`` run of the experiment matching ``condition`` (MLflow filter)."""
    client = config.client()
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"{condition} and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None
