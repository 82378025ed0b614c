"""The MLflow model registry: versions, aliases and decisions (`versions`), evaluating a model
and recording its scores (`scores`), and the promotion gate (`promotion`)."""
