"""Reproducing the paper: the faithfulness check against the authors' code, timings and memory, and what
each shortcut of the fast schedule costs.
"""
