"""Sources and formats: raw files, ELF files, map files, and the save format (SPEC §3)."""

from vmemfs.formats.detect import detect, open_source

__all__ = ["detect", "open_source"]
