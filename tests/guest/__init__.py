"""Real memory dumps of a QEMU guest running Debian's kernel, built once per machine
(see ``build.py``); tests reach them through ``guestdumps``."""
