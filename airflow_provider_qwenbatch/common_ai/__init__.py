"""The ``alibaba`` batch adapter of apache-airflow-providers-common-ai (``@task.llm_batch``).

Installed with the ``[common-ai]`` extra and registered by the entry point
``airflow.providers.common.ai.batch_adapters: alibaba``; common.ai imports it only when a
``model_id`` starts with ``alibaba:``. Nothing here is imported by the rest of the provider.
"""
