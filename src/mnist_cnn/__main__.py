"""``python -m mnist_cnn`` (and ``torchrun -m mnist_cnn``) runs the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
