"""Datasets: folder and labels-CSV sources, checks, decode cache, splits, synthetic lesions."""
