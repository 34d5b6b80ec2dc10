"""Worker side of the control plane: runs jobs with the engine and moves bytes.

Imports the engine, never Django: a GPU box holds no database credentials.
"""
