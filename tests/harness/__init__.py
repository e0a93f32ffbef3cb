"""Test harness: throw-away Debian hosts (systemd-nspawn) for integration and molecule runs."""
