"""Does RabbitMQ lose timers that expire while it stops? No service involved, only pika.

Publishes N persistent messages, round robin, into durable cache queues that all
dead-letter into one durable due queue (the service's topology in miniature: one cache
queue per bucket); their per-message expirations are spread evenly over a 3 s window. In the middle of the window the broker application
is stopped (`rabbitmqctl stop_app`) and started again. Once the cache queue is empty,
every message must be in the due queue; the run prints how many are not.

Classic queues dead-letter at most once (RabbitMQ's docs: a dead-lettered message is
removed from its queue without a confirm of the re-publish), so a message that expires
in the last milliseconds of the shutdown can be dropped. Quorum queues with
`x-dead-letter-strategy: at-least-once` keep it until the due queue has it (duplicates
possible). See README "Broker restarts and the two queue types".

It stops the machine's broker: run it alone, never beside the test suite.

    python3 -m venv /tmp/pika && /tmp/pika/bin/pip install pika
    /tmp/pika/bin/python scripts/experiments/dead_letter_at_broker_stop.py --runs 6
    /tmp/pika/bin/python scripts/experiments/dead_letter_at_broker_stop.py --runs 6 --queue-type quorum
"""

import argparse
import subprocess
import time

import pika

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
WINDOW_S = 3.0
DUE = "experiment_dlx_stop.due"


def cache_queues(count):
    return [f"experiment_dlx_stop.cache.{index}" for index in range(count)]


def declare(channel, queue_type, caches):
    """Each cache queue dead-letters into the due queue, as in the service's topology."""
    for queue in caches + [DUE]:
        channel.queue_delete(queue)
    typed = {"x-queue-type": queue_type}
    channel.queue_declare(DUE, durable=True, arguments=typed)
    cache_arguments = {
        **typed,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DUE,
    }
    if queue_type == "quorum":
        cache_arguments["x-dead-letter-strategy"] = "at-least-once"
        cache_arguments["x-overflow"] = "reject-publish"
    for queue in caches:
        channel.queue_declare(queue, durable=True, arguments=cache_arguments)


def rabbitmqctl(*arguments):
    subprocess.run(["rabbitmqctl", *arguments], capture_output=True, check=True)


def one_run(count, queue_type, caches):
    """Returns (lost, duplicates, ms into the window of the first and last lost message)."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    declare(channel, queue_type, caches)
    channel.confirm_delivery()
    # Publishing with a confirm each takes about 0.7 ms per message here; the window
    # starts after all are in.
    first_expiry = time.time() + count / 1000.0 + 6.0
    for index in range(count):
        expires = first_expiry + index * WINDOW_S / count
        ttl_ms = max(0, int((expires - time.time()) * 1000))
        properties = pika.BasicProperties(delivery_mode=2, expiration=str(ttl_ms))
        channel.basic_publish("", caches[index % len(caches)], str(index).encode(), properties)
    connection.close()

    time.sleep(max(0.0, first_expiry + WINDOW_S / 2 - time.time()))
    try:
        rabbitmqctl("stop_app")
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    deadline = time.time() + 60
    while any(channel.queue_declare(queue, passive=True).method.message_count for queue in caches):
        if time.time() > deadline:
            raise SystemExit("the cache queues did not empty within 60 s")
        time.sleep(0.5)
    received = []
    while True:
        method, _, body = channel.basic_get(DUE, auto_ack=True)
        if method is None:
            break
        received.append(int(body))
    for queue in caches + [DUE]:
        channel.queue_delete(queue)
    connection.close()
    lost = sorted(set(range(count)) - set(received))
    window_ms = [index * WINDOW_S * 1000 / count for index in (lost[:1] + lost[-1:])]
    return len(lost), len(received) - len(set(received)), window_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-queues", type=int, default=8)
    parser.add_argument("--queue-type", choices=["classic", "quorum"], default="classic")
    arguments = parser.parse_args()
    runs_with_loss = 0
    for run in range(1, arguments.runs + 1):
        caches = cache_queues(arguments.cache_queues)
        lost, duplicates, window_ms = one_run(arguments.count, arguments.queue_type, caches)
        runs_with_loss += lost > 0
        where = f", expiring {window_ms[0]:.0f}-{window_ms[1]:.0f} ms into the window" if lost else ""
        print(f"run {run}: {arguments.queue_type}, {arguments.count} timers in {len(caches)} cache queues, "
              f"stop_app at 1500 ms: "
              f"lost {lost}, duplicates {duplicates}{where}", flush=True)
    print(f"{runs_with_loss} of {arguments.runs} runs lost timers")


if __name__ == "__main__":
    main()
