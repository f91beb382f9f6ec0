"""Data plane: request in, result out."""
