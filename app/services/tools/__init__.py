"""Agent tools: declarations checked on registration, argument checks, the SSRF guard and the webhook client."""
