"""GPU memory a training config needs, predicted before the run (tables.py: the families' sizes;
estimate.py: the parts, the peak and the changes that make it fit a card)."""
