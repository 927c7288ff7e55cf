"""DAW integrations: companions and scripts that drive a DAW's own clips and tracks
through the bridge (each module says which DAW), and `backline send-notes` (lines.py),
the text-line return path for DAW scripts that cannot speak OSC."""
