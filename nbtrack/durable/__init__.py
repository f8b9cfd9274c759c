"""The journal, the background writer, sync and recovery: every record reaches the store."""
