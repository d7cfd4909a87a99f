"""Apache Airflow provider for Qwen Cloud (DashScope / Model Studio) Batch jobs."""

__version__ = "0.1.0"
