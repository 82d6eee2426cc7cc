"""Development and test tools: the kind cluster, images, the chart install, local servers, the
demo (never in images)."""
