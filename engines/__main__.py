"""``python -m engines``: the engines command line (see ``engines.cli``)."""

from engines.cli import main

if __name__ == "__main__":
    main()
