"""This package's sequential models, one per file named after the class in lower case (RecBole's rule)."""
