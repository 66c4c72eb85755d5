"""Click-log data: converters to Parquet, the synthetic generator, and the on-disk layout they share."""
