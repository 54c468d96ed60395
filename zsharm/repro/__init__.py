"""Reproducing the paper: the faithfulness check against the authors' code (reference.py), timings and memory
(speed.py, `zsharm bench`), and what each shortcut of the fast schedule costs (switches.py, `zsharm ablate`).
"""
