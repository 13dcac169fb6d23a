"""The package's version, in a module of its own so that low layers (the
export core writes it into manifests) read it without importing the root
package's lazy names."""

__version__ = "0.1.0"
