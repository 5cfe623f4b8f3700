"""Cancel requests in fakeredis: written once by a caller, found by any worker, gone after their time."""

import fakeredis

from athena_client.shared_redis.cancel_requests import CANCEL_TTL_S, CancelRequests, cancel_key


def test_a_cancel_request_is_found_by_id_and_among_many_in_one_look():
    client = fakeredis.FakeRedis()
    cancels = CancelRequests(client)
    cancels.request("b")
    assert cancels.requested("b") and not cancels.requested("a")
    assert cancels.which(["a", "b", "c"]) == {"b"} and cancels.which([]) == set()
    assert 0 < client.ttl(cancel_key("b")) <= CANCEL_TTL_S
