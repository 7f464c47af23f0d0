"""The model families, one module each; importing this package registers them (modules/config/family.py), in the
order that error messages list them: the paper's model first."""
# isort: skip_file
from modules.families import keypoint_mask  # noqa: F401  (the registration order)
from modules.families import fomm, perturbed, detector  # noqa: F401, I001
