"""MLflow: ``tracker`` records a run (params, metrics, figures, artifacts, the model);
``pyfunc`` serves a model folder as an MLflow pyfunc (raw feature values in, predictions out)."""
