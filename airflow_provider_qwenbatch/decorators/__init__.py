"""TaskFlow decorators of the provider (``@task.qwen_batch``)."""
