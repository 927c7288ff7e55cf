"""Training data: from music files to piano-roll windows.

- `genres`: what each model plays (its roles, their GM programs and channels, its window)
  and how a file's tracks map onto those roles.
- `melody`: which track of a multi-track file is the melody.
- `pieces`: one score -> key-normalised rolls of the melody and every role, bar-aligned,
  split at meter changes.
- `windows`: pieces -> windows of whole bars, split train/validation by piece.
- `build`: a `--data` value (a named corpus or a path) -> cached train/validation sets,
  with a progress bar and a summary of what was kept, skipped and why.
"""
