"""Development and test tools: local servers, control plane, node stand-in (never in images)."""
