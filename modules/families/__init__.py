"""The model families, one module each; importing this package registers them (modules/family.py), in the
order that error messages list them: the paper's model first."""
from modules.families import keypoint_mask  # noqa: F401  (isort: skip: the registration order)
from modules.families import fomm, perturbed, detector  # noqa: F401, I001
