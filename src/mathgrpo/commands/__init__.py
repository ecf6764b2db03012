"""The command layer: what each `mathgrpo` subcommand shows of what the Python API returns (result tables, where
the files went, the next command to run) and its exit code. `cli.py` parses the flags and calls these; the
library below them reports only through `progress`, and imports nothing from here."""
