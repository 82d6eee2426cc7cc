"""Development and test tools (local servers, control plane, node stand-in). Never shipped in images."""
