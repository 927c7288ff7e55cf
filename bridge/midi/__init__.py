"""Virtual MIDI ports, what a DAW sees of `backline serve`: the routing shared by every
backend (`common`), python-rtmidi's ports for ALSA, CoreMIDI and JACK (`ports`, which
also opens the right backend), frame-accurate JACK ports through libjack (`jack_ports`),
and a JACK server for the tools and tests (`jack_server`)."""
