"""Counting each task message's deliveries, so a poison message is stopped."""

import fakeredis

from athena_inference.workers.deliveries import DeliveryCounter


def test_each_delivery_of_a_message_is_counted():
    counter = DeliveryCounter(fakeredis.FakeRedis(), ttl_s=60)
    first = counter.delivered("t1", 0, redelivered=False)
    assert [first] + [counter.delivered("t1", 0, redelivered=True) for _ in range(2)] == [1, 2, 3]
    assert counter.so_far("t1", 0) == 3 and counter.so_far("t2", 0) == 1


def test_a_first_delivery_touches_nothing_in_redis():
    redis = fakeredis.FakeRedis()
    assert DeliveryCounter(redis, ttl_s=60).delivered("t1", 0, redelivered=False) == 1
    assert redis.keys("*") == []


def test_a_retry_is_counted_apart_from_redeliveries():
    counter = DeliveryCounter(fakeredis.FakeRedis(), ttl_s=60)
    counter.delivered("t1", 0, redelivered=True)
    assert counter.delivered("t1", 1, redelivered=False) == 1
    assert counter.delivered("t1", 1, redelivered=True) == 2


def test_a_finished_delivery_leaves_no_count_and_a_count_expires():
    redis = fakeredis.FakeRedis()
    counter = DeliveryCounter(redis, ttl_s=60)
    counter.delivered("t1", 0, redelivered=True)
    assert 0 < redis.ttl("athena:deliveries:t1:0") <= 60
    counter.done("t1", 0)
    assert redis.keys("athena:deliveries:*") == []
