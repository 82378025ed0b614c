"""MLflow tracking: runs, their params, tags and metrics (`runs`), and models saved, logged
and loaded as the project's own class (`model_store`, with the pyfunc face in `pyfunc_model`)."""
