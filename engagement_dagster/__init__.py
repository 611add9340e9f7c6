"""engagement-dagster: weekly customer engagement predictions as a Dagster asset graph."""
