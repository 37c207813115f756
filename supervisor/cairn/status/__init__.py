"""The local HTTP status endpoint: health, status JSON, metrics, dashboard."""
