"""The marketer's dashboard: sequences, their funnels, messages and customer timelines, at `/`."""
