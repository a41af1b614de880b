"""Training, prediction and evaluation loops shared by every model and search method."""
