from vlft.datasets.builders import SyntheticShapesBuilder

__all__ = ["SyntheticShapesBuilder"]
