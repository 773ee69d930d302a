"""sfsd: Surgical Feature-Space Decomposition of large language models.

Importing the package registers the compressed-model classes with transformers, so that a
folder saved by sfsd loads with plain `AutoModelForCausalLM.from_pretrained(folder)`.
"""

__version__ = "0.1.0"

from sfsd import hf_classes as _hf_classes  # noqa: E402

_hf_classes.register_all()
