"""Model families (one file each) and the registry of named sizes."""

from ecar.models.registry import FAMILIES, ENTRIES, Family, family_of, model_names

__all__ = ["ENTRIES", "FAMILIES", "Family", "family_of", "model_names"]
