"""A task's streamed pieces in fakeredis: in order, resumable from an entry id, ended once, bounded in time."""

import fakeredis

from athena_client.shared_redis.piece_streams import START, PieceStreams, stream_key


def test_pieces_are_read_in_order_then_the_end_and_a_reader_resumes_after_the_last_id_it_saw():
    client = fakeredis.FakeRedis()
    streams = PieceStreams(client, ttl_s=60)
    for i, text in enumerate(["The ", "light", "house"]):
        streams.append("t1", text, first=i == 0)
    streams.end("t1", "ok")
    entries = streams.read("t1", START, block_ms=None)
    assert [e.text for e in entries[:3]] == ["The ", "light", "house"] and entries[3].end == "ok"
    resumed = streams.read("t1", entries[0].id, block_ms=None)
    assert [e.text for e in resumed] == ["light", "house", ""] and resumed[-1].end == "ok"
    assert 0 < client.ttl(stream_key("t1")) <= 60


def test_a_stream_nobody_wrote_reads_as_nothing_and_does_not_exist():
    streams = PieceStreams(fakeredis.FakeRedis())
    assert streams.read("nobody", START, block_ms=None) == [] and not streams.exists("nobody")
