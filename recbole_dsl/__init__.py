"""Dynamic Sparse Learning (DSL, WSDM 2024) for every RecBole model."""

__version__ = "0.1.0"
