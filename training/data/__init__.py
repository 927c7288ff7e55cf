"""Training data: from converted pieces to cached piano-roll windows.

- `grid`: the step and pitch grid every model trains on, `PieceRolls` (one piece on it)
  and `SkipPiece` (a piece left out, with the reason).
- `genres`: what each model plays (its roles, their GM programs and channels, its window)
  and how a file's tracks map onto those roles.
- `melody`: which track of a multi-track file is the melody.
- `pieces`: one score -> key-normalised rolls of the melody and every role, bar-aligned,
  split at meter changes.
- `windows`: pieces -> `WindowDataset`, windows of whole bars (what the loop trains on).
- `split`: which pieces are held out for validation (by piece, stable across machines).
- `cache`: converted pieces in one compressed .npz, in $BACKLINE_CACHE.
- `build`: a `--data` value (the chorales, the quartets, or paths) -> cached
  train/validation sets, with a progress bar and a summary of what was kept, skipped and why.

The readers that turn files and corpora into scores or pieces are in `training/sources/`.
"""
