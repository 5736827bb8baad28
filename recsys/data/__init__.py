"""Raw data: the RecSys 2021 schema, its seeded generator, and dataset readers."""
