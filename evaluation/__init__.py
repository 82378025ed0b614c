"""Evaluation: J and F as DAVIS defines them (`metrics`), DAVIS-layout folders (`folders`),
segmenting videos (`segment`), running a model over sequences (`runner`) and reports
(`report`). No MLflow: recording a report is `registry.scores`."""
