"""Voice agents around ``MossTTSService``: runner bots, the offline profile, headless evaluation."""
