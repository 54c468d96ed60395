"""Stage 3, decide: the evaluator scores how harmonious a result looks (evaluator.py), and the rule chooses
Continue, Regenerate or Conclude (rule.py); loop.py runs stages 2 and 3 together and history.py keeps the
run's history (images, history.json, the contact sheet); training.py trains an evaluator of your own.
"""
