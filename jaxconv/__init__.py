"""jaxconv: training and sampling convolutional image models with JAX and Flax."""

__version__ = "0.1.0"
