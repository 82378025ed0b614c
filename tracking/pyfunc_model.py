"""The code of the pyfunc model that `tracking.model_store.log_model` logs (MLflow's "models from
code": MLflow runs this file when the model is loaded, instead of unpickling an object)."""

import mlflow

from tracking.model_store import VideoSegmentationModel

mlflow.models.set_model(VideoSegmentationModel())
