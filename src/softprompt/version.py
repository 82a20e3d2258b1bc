"""The package version, a leaf every module may import (artifacts record it)."""

__version__ = "0.1.0"
