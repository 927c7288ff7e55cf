"""Training: PyTorch code that turns music into the ONNX models `backline.models` plays.

Read it in the order the data flows:

- `sources/`: where music comes from (MIDI folders, Doom WADs, LPD .npz, music21's
  chorales and quartets).
- `data/`: pieces on the training grid -> cached train/validation windows.
- `networks/`: the generators and critics (the U-Net for bach, MuseGAN-style for genres).
- The loop: `train.py` (WGAN-GP, read top to bottom), `batches.py` (the training set on
  the device, a batch per index draw), `checkpoint.py` (save and check-on-load),
  `distributed.py` (devices, precision, compile, torchrun ranks), `throughput.py` (the
  training figure of `backline bench`).
- Evaluation: `metrics.py` (MuseGAN-style metrics, numpy only) and `evaluation.py`
  (a generator's accompaniment scored beside the real music); `plots.py` draws samples
  and curves.
- Export: `layout.py` (the instruments and spec a model ships with), `export.py` (ONNX,
  checked against PyTorch), `card.py` (the model card).
- `commands.py`: `backline train`, `export` and `evaluate`, the glue the CLI calls.

Nothing here imports `bridge`; `models` never imports this package.
"""
