"""The models as `backline serve` holds them: the generation worker with its batching
(`engine`) and the hot reload of changed model files (`reload`)."""
