"""Celery settings: JSON only, late acks, one message at a time, confirmed publishes, events on for Flower."""

# The broker URL is the Flask app's BROKER_URL (app/config.py), set by app/celery_app.py: one source of truth.
broker_connection_retry_on_startup = True
# py-amqp waits for the broker's confirm on every publish, so a returned apply_async means "on the broker".
broker_transport_options = {"confirm_publish": True}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = True
task_default_queue = "executions"
# Modules whose @shared_task functions the worker registers.
imports = ["tasks.executions"]
task_default_delivery_mode = "persistent"
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}

worker_prefetch_multiplier = 1
# On for Flower; CELERY_TASK_EVENTS=0 turns both off (app/config.py, applied by app/celery_app.py).
worker_send_task_events = True
task_send_sent_event = True
# celery #9835: deduplicating successful tasks silently dropped later chain steps.
worker_deduplicate_successful_tasks = False
worker_hijack_root_logger = False
