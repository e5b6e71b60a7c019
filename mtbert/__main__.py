"""python -m mtbert: the command line, where only the package (not its script) is on the path."""

from mtbert.commands.cli import main

main()
