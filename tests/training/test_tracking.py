"""The stages log to their own MLflow run and server, whatever the calling process had set up
(a notebook or a test with another experiment, run or tracking URI active), and leave that
setup as it was."""

from __future__ import annotations

import uuid

import mlflow
from mlflow.tracking import MlflowClient

from tracking import runs


def test_a_resumed_run_gets_the_logs_while_another_run_is_active(mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    training_run = client.create_run(client.create_experiment(f"training-{uuid.uuid4().hex}"))
    run_id = training_run.info.run_id

    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment(f"notebook-{uuid.uuid4().hex}")
    with mlflow.start_run() as notebook_run:
        with runs.resumed_run(mlflow_server.uri, run_id):
            mlflow.log_param("logged_to", "training run")
        assert mlflow.active_run().info.run_id == notebook_run.info.run_id

    assert client.get_run(run_id).data.params == {"logged_to": "training run"}
    assert client.get_run(notebook_run.info.run_id).data.params == {}


def test_pointing_at_a_server_is_undone_afterwards(mlflow_server, tmp_path):
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(mlflow_server.uri)
    with runs.pointed_at(elsewhere):
        assert mlflow.get_tracking_uri() == elsewhere
    assert mlflow.get_tracking_uri() == mlflow_server.uri

    try:
        with runs.pointed_at(elsewhere):
            raise KeyError("a stage that fails")
    except KeyError:
        pass
    assert mlflow.get_tracking_uri() == mlflow_server.uri
