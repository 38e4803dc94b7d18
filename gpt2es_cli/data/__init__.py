"""Data: sources -> normalised documents -> token files; the prepared-dataset format and reader."""
