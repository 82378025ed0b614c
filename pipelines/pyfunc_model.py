"""The code of the pyfunc model that `pipelines.model_io.log_model` logs (MLflow's "models from
code": MLflow runs this file when the model is loaded, instead of unpickling an object)."""

import mlflow

from pipelines.model_io import VideoSegmentationModel

mlflow.models.set_model(VideoSegmentationModel())
