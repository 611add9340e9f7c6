"""The six models, one file each, over `base.py`; `engagement_dagster.core.ml.training` names them."""
