"""vmemfs: a sparse 64-bit memory map, and a FUSE filesystem that shows it as files."""
