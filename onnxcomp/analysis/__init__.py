"""Graph analysis, without mutation: shapes and costs, channel groups and channel importance for filter pruning,
activation clipping ranges from statistics."""
