"""For the course: the notebooks' one-call set-up and cost arithmetic (setup), attention tracing (trace),
measurements and plots (plots), one explorer per stage over results computed once (widgets), and the paper's
figures (figures).
"""
