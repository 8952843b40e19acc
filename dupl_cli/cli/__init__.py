"""The Typer application: argument parsing, settings resolution and printing.

Belongs here: what a user types and reads. May import every room. Commands import the rooms below
inside their functions, so ``dupl --help`` imports no torch.
"""
