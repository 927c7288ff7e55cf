"""Clips: assembled from begin / notes / end messages (`clips`), generated and streamed
back as replies (`generate`, on the serving worker), and the client that sends one from a
MIDI file (`send`, the `backline send` command)."""
