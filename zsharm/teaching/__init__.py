"""For the course: attention tracing, measurements and plots, the paper's figures, the notebooks' set-up.
"""
