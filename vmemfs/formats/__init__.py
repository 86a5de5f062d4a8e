"""Source formats: each module reads or writes one (SPEC §3; see vmemfs.opening)."""
