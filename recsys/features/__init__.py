"""Feature engineering on Spark: fitted operations, FeaturePipeline, FeatureSpec."""
