"""Celery settings: JSON only, late acks, one message at a time, confirmed publishes, events on for Flower."""

import os

# The broker URL is the Flask app's BROKER_URL (app/config.py), set by app/celery_app.py: one source of truth.
broker_connection_retry_on_startup = True
# py-amqp waits for the broker's confirm on every publish, so a returned apply_async means "on the broker".
broker_transport_options = {"confirm_publish": True}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

task_ignore_result = True
# No result backend, but Celery builds its (disabled) backend once per thread unless told it is thread safe, and under
# gevent each request is a new greenlet: every POST /execute loaded the result-backend entry points from disk again
# (9% of the web process's CPU at 1,000 streams, py-spy; issue 12).
result_backend_thread_safe = True
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = True
task_default_queue = "executions"
# Modules whose @shared_task functions the worker registers.
imports = ["tasks.executions"]
task_default_delivery_mode = "persistent"
task_publish_retry = True
# Used by the worker for a chain's next step (the web's enqueue retries on its own, app/services/chain_publish.py).
# Giving up loses the step, so the retries outlast a frozen node: each try waits at most BROKER_SOCKET_TIMEOUT_S and
# the next one goes to the next node, whose confirm waits until the queue has elected a new leader.
task_publish_retry_policy = {"max_retries": 4, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}

worker_prefetch_multiplier = 1
# On for Flower; CELERY_TASK_EVENTS=0 turns both off (app/config.py, applied by app/celery_app.py).
worker_send_task_events = True
# No task-sent events: Flower shows a task from its task-received event on, and each sent event was one more
# publish per step, outside any batch (about 0.6 ms per execution over the web and the workers; issue 12).
task_send_sent_event = False
# celery #9835: deduplicating successful tasks silently dropped later chain steps.
worker_deduplicate_successful_tasks = False
worker_hijack_root_logger = False

# --- Issue 12: the LLM step on its own queue (docs/performance.md, "In flight") ----------------------------------
# The LLM step waits on the network for seconds and needs almost no CPU, so it runs on `executions.llm`, consumed by
# a threads-pool worker of about 1,000 (Procfile `worker-llm`); governance and persistence stay on `executions`
# with the prefork worker, so they never queue behind slow provider calls. The chain builder is unchanged: Celery
# routes each signature by task name when the previous step publishes it.
task_routes = {"executions.llm": {"queue": "executions.llm"}}
# With acks late, prefetch = concurrency x multiplier (1, above): a worker holds only what it runs, so no
# delivery waits unacked behind a busy pool and counts against RabbitMQ's consumer_timeout (30 min, above
# MAX_TIMEOUT_S = 25 min), and a killed worker strands no more than its own in-flight calls.
# The AMQP heartbeat (Celery's default 120 s); 0 turns it off. A gevent worker stalls ~100 ms per delivery while it
# is on (with task events): bench/pool_floor.py, docs/performance.md.
broker_heartbeat = float(os.environ.get("BROKER_HEARTBEAT_S", "120"))
