"""pipeline.yaml: load and validate it (schema.py), what it holds (model.py), the one table of runtime parameters
(parameters.py) and the value checks and service facts they use (checks.py)."""
from .checks import has_instance_store
from .model import Spec
from .parameters import PARAMETER_NAMES, PARAMETERS, Parameter, absolute_location, value_problem
from .schema import load_spec

__all__ = ["PARAMETERS", "PARAMETER_NAMES", "Parameter", "Spec", "absolute_location",
           "has_instance_store", "load_spec", "value_problem"]
