"""Measuring the method's quality (`zsharm evaluate`): data sets, metrics, classical baselines, the method
comparison and the user study.
"""
