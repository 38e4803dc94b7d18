"""`python -m gpt2es_cli` runs the command-line app."""

from gpt2es_cli.cli import main

if __name__ == "__main__":
    main()
