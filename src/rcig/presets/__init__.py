"""The paper\x27s six configs as JSON data files (see rcig.config)."""
