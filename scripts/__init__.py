"""Developer scripts: the demo and the shared Airflow test environment."""
