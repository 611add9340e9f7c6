"""The real-time prediction API (FastAPI): imports the plain library (engagement_dagster.core), never Dagster."""
