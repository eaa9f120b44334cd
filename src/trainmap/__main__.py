"""``python -m trainmap`` runs the command-line interface (the same as the ``trainmap`` command)."""

from trainmap.cli import main

if __name__ == "__main__":
    main()
