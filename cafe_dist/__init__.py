"""cafe-dist: CAFE-compressed embeddings for DLRM on Ray Train + TorchRec."""
__version__ = "0.1.0"
