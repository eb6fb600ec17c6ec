"""The code MLflow runs to load a hamnet ``python_function`` model ("models from code").

:func:`hamnet.tracking.mlflow_models.log_candidate_model` passes this file as the
``python_model`` of the models it logs: MLflow copies it into the model and executes it
on load, so no Python object is pickled. Not meant to be imported by hamnet itself.
"""

from mlflow.models import set_model

from hamnet.tracking.pyfunc import HamnetRuntimeModel

set_model(HamnetRuntimeModel())
