"""Evaluation as the field reports it: the loss on a corpus (corpus) and HellaSwag (hellaswag)."""
