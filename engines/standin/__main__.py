"""`python -m engines.standin`: see :mod:`engines.standin.cli`."""

from engines.standin.cli import main

if __name__ == "__main__":
    main()
