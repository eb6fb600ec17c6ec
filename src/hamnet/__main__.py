"""``python -m hamnet``: the same commands as the ``hamnet`` console script."""

from hamnet.ops.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
