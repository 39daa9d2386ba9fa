"""Stage tests: one stage (or storage) on the session's local Ray, or against the loopback S3 server."""
