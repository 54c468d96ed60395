"""Measuring the method: data sets, metrics, classical baselines, the method comparison and the user study.
"""
