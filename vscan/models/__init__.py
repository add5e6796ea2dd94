"""Models. Importing this registers vscan's timm models (vision) and exposes the MONAI
networks (medical) and language models (lm)."""
from . import lm, medical, vision  # noqa: F401
