"""Plain data of the core: dead letters pickled by older versions still load."""

from __future__ import annotations

import pickle

import pytest

from pipeline.model import DeadLetter, DeadLetterReason

# DeadLetter(b"not json", INVALID_JSON, "expected value", "canary-v2", "telemetry/2@17") pickled by
# the version before dead letters kept their Kafka message's key, timestamp and headers.
OLD_PICKLES = {
    5: (b"\x80\x05\x95\x8c\x00\x00\x00\x00\x00\x00\x00\x8c\x0epipeline.model\x94\x8c\nDeadLetter\x94\x93"
        b"\x94)\x81\x94]\x94(C\x08not json\x94h\x00\x8c\x10DeadLetterReason\x94\x93\x94\x8c\x0cinvalid_json"
        b"\x94\x85\x94R\x94\x8c\x0eexpected value\x94\x8c\tcanary-v2\x94\x8c\x0etelemetry/2@17\x94eb."),
    2: (b"\x80\x02cpipeline.model\nDeadLetter\nq\x00)\x81q\x01]q\x02(c_codecs\nencode\nq\x03X\x08\x00\x00"
        b"\x00not jsonq\x04X\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07cpipeline.model\nDeadLetterReason\nq"
        b"\x08X\x0c\x00\x00\x00invalid_jsonq\t\x85q\nRq\x0bX\x0e\x00\x00\x00expected valueq\x0cX\t\x00\x00"
        b"\x00canary-v2q\rX\x0e\x00\x00\x00telemetry/2@17q\x0eeb."),
}


@pytest.mark.parametrize("protocol", sorted(OLD_PICKLES))
def test_a_dead_letter_pickled_before_keys_loads_without_one(protocol: int) -> None:
    dead = pickle.loads(OLD_PICKLES[protocol])
    assert dead == DeadLetter(b"not json", DeadLetterReason.INVALID_JSON, "expected value", "canary-v2",
                              "telemetry/2@17")
    assert (dead.key, dead.timestamp_ms, dead.headers) == (None, None, ())


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_a_dead_letter_with_its_origin_round_trips(protocol: int) -> None:
    dead = DeadLetter(b"{", DeadLetterReason.INVALID_JSON, "eof", None, "telemetry/0@3", key=b"s-9",
                      timestamp_ms=1_756_274_400_123, headers=(("trace", b"t"), ("empty", None)))
    assert pickle.loads(pickle.dumps(dead, protocol=protocol)) == dead
