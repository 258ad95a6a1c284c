"""mnist-cnn: train, evaluate and look inside the classic "Deep MNIST" CNN."""

__version__ = "0.1.0"
