"""The command line, outside the library: argparse and one module per `zsharm` command (cli.py gathers them).
Library modules take typed arguments; these modules turn parsed options into them.
"""
