"""`backline bench` and its parts, measured side by side in one run (`suite`): the bare
model call and the OSC round trip, concurrent clients and the model-only bound, ONNX
Runtime against PyTorch (`inference`), live timing on JACK (`live`), long replies'
delivery (`delivery`). Nothing on the serving path imports this package."""
