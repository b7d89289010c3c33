"""Issue 11: another team's groups and topics through the filter, with real clients
(kafka-python's KafkaAdminClient, confluent-kafka's AdminClient) and raw requests, against a
real tansu broker behind wasm-sidecar. What the victim owns is checked afterwards through a
second path: straight to tansu, not through the filter."""
import json
import struct

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, NewTopic
from kafka.admin import NewPartitions as KNewPartitions
from kafka.structs import OffsetAndMetadata, TopicPartition

import kafka_raw as kr

# The policy: only team-a may use orders.* and groups team-a-*; everyone describes.
TEAMS = {"policy": {"defaultAction": "deny", "rules": [
    {"name": "team-a-topics", "action": "allow", "clientIds": ["team-a"],
     "operations": ["produce", "consume", "describe", "create"], "topics": ["orders.*"]},
    {"name": "team-a-groups", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]},
    {"name": "all-describe", "action": "allow", "operations": ["describe"]}]}}

OFFSET_FETCH = 9
GROUP_AUTHORIZATION_FAILED = 30


def teams_stack(stack_factory):
    return stack_factory(config=json.dumps(TEAMS), log_level="info")


def direct(st):
    """host, port of tansu itself: the second path, around the filter."""
    return "127.0.0.1", st.broker_port


def seed_team_a(st, topic="orders.bypass", group="team-a-orders", offset=7):
    """team-a creates its topic and commits `offset` for partition 0 in its group."""
    a = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="team-a")
    a.create_topics([NewTopic(topic, 1, 1)])
    a.alter_group_offsets(group, {TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
    a.close()


def offset_fetch(conn, version, group, topics):
    """Raw OffsetFetch at `version` for `group`; `topics` {name: [partitions]} or None (all of
    the group's offsets). Returns (group error, {(topic, partition): (error, offset)})."""
    fx = version >= 6
    def topics_part():
        if topics is None:
            return kr.array_len(None, fx)
        out = kr.array_len(len(topics), fx)
        for t, ps in topics.items():
            out += kr.string(t, fx) + kr.array_len(len(ps), fx) + b"".join(kr.i32(p) for p in ps)
            out += kr.tags(fx)
        return out
    if version >= 8:
        body = kr.array_len(1, True) + kr.string(group, True)
        if version >= 9:
            body += kr.string(None, True) + kr.i32(-1)  # member_id, member_epoch
        body += topics_part() + kr.tags() + kr.i8(0) + kr.tags()
    else:
        body = kr.string(group, fx) + topics_part()
        if version >= 7:
            body += kr.i8(0)
        body += kr.tags(fx)
    r = conn.request(OFFSET_FETCH, version, body)
    got = {}

    def partitions(topic):
        for _ in range(r.array_len()):
            p, off = r.i32(), r.i64()
            if version >= 5:
                r.i32()
            r.string()
            got[(topic, p)] = (r.i16(), off)
            r.tags()
    if version >= 3:
        r.i32()  # throttle
    if version >= 8:
        error = 0
        for _ in range(r.array_len()):
            r.string()
            for _ in range(r.array_len()):
                partitions(r.string().decode())
                r.tags()
            error = r.i16()
            r.tags()
        return error, got
    # tansu 0.6 leaves the topics array out of an all-offsets answer (v1-7)
    rest = len(r.b) - r.p
    bare = {1: 0, 2: 2}.get(version, 6 if version <= 5 else 7) - (4 if version >= 3 else 0)
    if rest != bare:
        for _ in range(r.array_len()):
            partitions(r.string().decode())
            r.tags()
    error = r.i16() if version >= 2 else 0
    r.tags()
    assert r.at_end()
    return error, got


@pytest.fixture(autouse=True)
def _flexible_versions():
    kr.FLEXIBLE.setdefault(OFFSET_FETCH, 6)


def test_kafka_python_list_group_offsets_under_a_policy(stack_factory):
    """Point 5: kafka-python's admin `list_group_offsets` lost its connection under any policy
    ("truncated while reading tagged_fields"): the filter capped OffsetFetch at v7, and
    tansu's v7 answer for all of a group's offsets has no topics array."""
    st = teams_stack(stack_factory)
    seed_team_a(st)
    tp = TopicPartition("orders.bypass", 0)
    a = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="team-a")
    assert a.list_group_offsets("team-a-orders")["team-a-orders"][tp].offset == 7
    assert a.list_group_offsets({"team-a-orders": [tp]})["team-a-orders"][tp].offset == 7
    a.close()
    intruder = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="intruder")
    with pytest.raises(Exception) as e:
        intruder.list_group_offsets("team-a-orders")
    assert "GroupAuthorizationFailed" in type(e.value).__name__ + str(e.value), e.value
    intruder.close()
    log = st.sidecar.read_log()
    assert "malformed" not in log, log[-2000:]


def test_offset_fetch_every_version_through_the_filter(stack_factory):
    """OffsetFetch v1-9 (every version the filter lets a client use under a policy), raw, by
    team-a and by an intruder, named and all-offsets; the connection stays usable throughout."""
    st = teams_stack(stack_factory)
    seed_team_a(st)
    with kr.Conn("127.0.0.1", st.sidecar_port, client_id="team-a") as c:
        for v in range(1, 10):
            err, got = offset_fetch(c, v, "team-a-orders", {"orders.bypass": [0]})
            assert (err, got) == (0, {("orders.bypass", 0): (0, 7)}), f"v{v}"
            if v >= 2:
                err, got = offset_fetch(c, v, "team-a-orders", None)
                assert err == 0, f"v{v}"
                # tansu fills all-offsets answers only from v8 (its v1-7 answer is empty)
                assert got == ({("orders.bypass", 0): (0, 7)} if v >= 8 else {}), f"v{v}"
    with kr.Conn("127.0.0.1", st.sidecar_port, client_id="intruder") as c:
        for v in range(2, 10):
            err, got = offset_fetch(c, v, "team-a-orders", None)
            assert (err, got) == (GROUP_AUTHORIZATION_FAILED, {}), f"v{v}"
            err, got = offset_fetch(c, v, "team-a-orders", {"orders.bypass": [0]})
            assert err == GROUP_AUTHORIZATION_FAILED or got == {("orders.bypass", 0): (30, -1)}, \
                f"v{v}: {err} {got}"
    assert "malformed" not in st.sidecar.read_log()
    # the second path: team-a's offset is still there
    with kr.Conn(*direct(st), client_id="check") as c:
        assert offset_fetch(c, 8, "team-a-orders", None) == (0, {("orders.bypass", 0): (0, 7)})


def victim_state(st):
    """team-a's committed offset, its topic and its records, read straight from tansu."""
    with kr.Conn(*direct(st), client_id="check") as c:
        _, offsets = offset_fetch(c, 8, "team-a-orders", None)
        md = kr.metadata(c, ["orders.bypass"])
        err, batches = kr.fetch_all(c, "orders.bypass", 0)
    records = [r for b in batches for r in b.records]
    return offsets, md, (err, records)


def try_call(fn, *args, **kw):
    """The outcome of one intruder call: the result, or the exception's type name."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - every refusal is fine, none may succeed
        return type(e).__name__ + ": " + str(e)[:200]


def refused(result):
    """An error outcome: an exception, or every partition of a group result failed."""
    if isinstance(result, str):
        return True
    parts = getattr(result, "topic_partitions", None)
    return bool(parts) and all(p.error is not None for p in parts)


def test_intruder_admin_calls_against_another_teams_groups_and_topics(stack_factory):
    """Point 6: an intruder tries the admin calls kafka-python and confluent-kafka offer
    against team-a's group and topic through the filter; each is refused or filtered, and
    team-a's offsets, topic and records are unchanged when read around the filter."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition as CTP
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewPartitions

    st = teams_stack(stack_factory)
    seed_team_a(st)
    p = Producer({"bootstrap.servers": st.bootstrap, "client.id": "team-a"})
    for i in range(5):
        p.produce("orders.bypass", key=b"k%d" % i, value=b"v%d" % i)
    assert p.flush(30) == 0
    before = victim_state(st)
    assert before[0] == {("orders.bypass", 0): (0, 7)} and len(before[2][1]) == 5, before

    tp = TopicPartition("orders.bypass", 0)
    a = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="intruder")
    out = {
        "delete_groups": try_call(a.delete_groups, ["team-a-orders"]),
        "list_groups": try_call(a.list_groups),
        "describe_groups": try_call(a.describe_groups, ["team-a-orders"]),
        "alter_group_offsets": try_call(a.alter_group_offsets, "team-a-orders",
                                        {tp: OffsetAndMetadata(0, "", -1)}),
        "delete_group_offsets": try_call(a.delete_group_offsets, "team-a-orders", [tp]),
        "list_group_offsets": try_call(a.list_group_offsets, "team-a-orders"),
        "delete_records": try_call(a.delete_records, {tp: 5}),
        "create_partitions": try_call(a.create_partitions, {"orders.bypass": KNewPartitions(4)}),
    }
    a.close()
    # each call below may lose its connection (a refused API without an error response)
    for name, call in [
        ("describe_configs", lambda b: b.describe_configs([ConfigResource("TOPIC", "orders.bypass")])),
        ("describe_producers", lambda b: b.describe_producers([tp])),
        ("delete_topics", lambda b: b.delete_topics(["orders.bypass"])),
        ("elect_leaders", lambda b: b.elect_leaders(election_type=0, topic_partitions=[tp])),
    ]:
        b = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="intruder",
                             request_timeout_ms=5000)
        out[name] = try_call(call, b)
        try_call(b.close)
    groups = out["list_groups"]
    assert "team-a-orders" not in repr(groups), groups
    for name in ("delete_groups", "describe_groups"):
        assert "GroupAuthorizationFailed" in repr(out[name]), (name, out[name])
    assert "Error" in repr(out["list_group_offsets"]), out["list_group_offsets"]

    c = AdminClient({"bootstrap.servers": st.bootstrap, "client.id": "intruder"})
    cout = {}
    for name, fut in [
        ("delete_consumer_groups", c.delete_consumer_groups(["team-a-orders"], request_timeout=10)),
        ("alter_consumer_group_offsets", c.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions("team-a-orders", [CTP("orders.bypass", 0, 0)])])),
        ("list_consumer_group_offsets", c.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions("team-a-orders")])),
        ("delete_topics", c.delete_topics(["orders.bypass"], operation_timeout=5)),
        ("create_partitions", c.create_partitions([NewPartitions("orders.bypass", 3)])),
        ("delete_records", c.delete_records([CTP("orders.bypass", 0, 5)])),
    ]:
        for f in fut.values():
            cout[name] = try_call(f.result, 15)
            assert refused(cout[name]), (name, cout[name])  # an error, never a success
    listed = c.list_consumer_groups().result(15)
    assert "team-a-orders" not in [g.group_id for g in listed.valid], listed.valid
    described = c.describe_consumer_groups(["team-a-orders"])
    for f in described.values():
        r = try_call(f.result, 15)
        assert isinstance(r, str), r

    after = victim_state(st)
    assert after == before, (before, after, out, cout)


# Point 4: the topic-naming admin APIs tansu 0.6 answers (DescribeConfigs 0-4,
# DescribeTopicPartitions 0; it has no DescribeProducers or OffsetForLeaderEpoch, whose
# checks are covered by the session tests with a fake broker).
DESCRIBE_CONFIGS, DESCRIBE_TOPIC_PARTITIONS = 32, 75
CLUSTER_AUTHORIZATION_FAILED = 31
# team-a describes orders.* except orders.secret; nobody has an apiKeys rule for broker configs.
SECRETS = {"policy": {"defaultAction": "deny", "rules": [
    {"name": "no-secret", "action": "deny", "topics": ["orders.secret"]},
    {"name": "team-a-topics", "action": "allow", "clientIds": ["team-a"],
     "operations": ["produce", "consume", "describe", "create"], "topics": ["orders.*"]},
    {"name": "team-a-groups", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]}]}}


def describe_configs_v1(conn, resources):
    """Raw DescribeConfigs v1: [(type, name)] -> {(type, name): (error, number of configs)}."""
    body = kr.i32(len(resources))
    for t, n in resources:
        body += kr.i8(t) + kr.string(n) + kr.i32(-1)
    body += kr.i8(0)  # include_synonyms
    r = conn.request(DESCRIBE_CONFIGS, 1, body)
    r.i32()
    out = {}
    for _ in range(r.array_len()):
        err = r.i16()
        r.string()
        key = (r.i8(), r.string().decode())
        configs = r.array_len()
        for _ in range(configs):
            r.string(), r.string(), r.i8(), r.i8(), r.i8()
            for _ in range(r.array_len()):
                r.string(), r.string(), r.i8()
        out[key] = (err, configs)
    assert r.at_end()
    return out


def describe_topic_partitions(conn, topics):
    """Raw DescribeTopicPartitions v0: {name: (error, topic id is zero, partitions)}, and
    whether a next cursor came back."""
    body = kr.array_len(len(topics), True)
    for t in topics:
        body += kr.string(t, True) + kr.tags()
    body += kr.i32(2000) + kr.i8(-1) + kr.tags()
    r = conn.request(DESCRIBE_TOPIC_PARTITIONS, 0, body)
    r.i32()
    out = {}
    for _ in range(r.array_len()):
        err = r.i16()
        name = r.string().decode()
        zero = r.take(16) == bytes(16)
        r.i8()
        parts = r.array_len()
        for _ in range(parts):
            r.i16(), r.i32(), r.i32(), r.i32()
            for _ in range(5):
                for _ in range(r.array_len()):
                    r.i32()
            r.tags()
        r.i32()
        r.tags()
        out[name] = (err, zero, parts)
    cursor = r.i8() >= 0
    return out, cursor


def test_describe_configs_and_describe_topic_partitions_are_checked_per_resource(stack_factory):
    """Point 4 against tansu: DescribeConfigs answers a denied topic TOPIC_AUTHORIZATION_FAILED
    and a broker resource CLUSTER_AUTHORIZATION_FAILED (no apiKeys rule allows it) while the
    allowed topic gets tansu's answer; DescribeTopicPartitions answers a denied named topic
    TOPIC_AUTHORIZATION_FAILED with the zero id, and answers a request naming only denied topics itself. The connection stays usable, for kafka-python's
    describe_configs too."""
    kr.FLEXIBLE.setdefault(DESCRIBE_TOPIC_PARTITIONS, 0)
    st = stack_factory(config=json.dumps(SECRETS), log_level="info")
    with kr.Conn(*direct(st), client_id="setup") as d:
        assert kr.create_topics(d, [("orders.bypass", 2), ("orders.secret", 1)]) == \
            {b"orders.bypass": 0, b"orders.secret": 0}
    with kr.Conn("127.0.0.1", st.sidecar_port, client_id="team-a") as c:
        got = describe_configs_v1(c, [(2, "orders.bypass"), (2, "orders.secret"), (4, "0")])
        assert got[(2, "orders.secret")] == (kr.TOPIC_AUTHORIZATION_FAILED, 0), got
        assert got[(4, "0")] == (CLUSTER_AUTHORIZATION_FAILED, 0), got
        assert got[(2, "orders.bypass")][0] == 0, got  # tansu 0.6 lists no configs
        named, _ = describe_topic_partitions(c, ["orders.bypass", "orders.secret"])
        assert named == {"orders.bypass": (0, False, 2),
                         "orders.secret": (kr.TOPIC_AUTHORIZATION_FAILED, True, 0)}, named
        # tansu 0.6 answers an all-topics request with no topics at all (checked straight
        # from it); the filtering of a real listing is covered by the session tests.
        with kr.Conn(*direct(st), client_id="check") as dc:
            tansu_lists = describe_topic_partitions(dc, [])[0]
        listed, _ = describe_topic_partitions(c, [])
        assert "orders.secret" not in listed, listed
        assert set(listed) == set(tansu_lists) - {"orders.secret"}, (listed, tansu_lists)
        only_denied, _ = describe_topic_partitions(c, ["orders.secret"])
        assert only_denied == {"orders.secret": (kr.TOPIC_AUTHORIZATION_FAILED, True, 0)}
        assert b"orders.bypass" in kr.metadata(c, ["orders.bypass"])  # still usable
    with kr.Conn("127.0.0.1", st.sidecar_port, client_id="intruder") as c:
        named, _ = describe_topic_partitions(c, ["orders.bypass"])
        assert named == {"orders.bypass": (kr.TOPIC_AUTHORIZATION_FAILED, True, 0)}, named
        listed, _ = describe_topic_partitions(c, [])
        assert listed == {}, listed
    a = KafkaAdminClient(bootstrap_servers=st.bootstrap, client_id="team-a")
    ok = a.describe_configs([ConfigResource("TOPIC", "orders.bypass")])
    denied = try_call(a.describe_configs, [ConfigResource("TOPIC", "orders.secret")])
    again = a.describe_configs([ConfigResource("TOPIC", "orders.bypass")])
    a.close()
    assert "orders.bypass" in repr(ok) and ok == again, (ok, again)
    # kafka-python 3 reports a failed resource as one without configs (it drops the error)
    assert denied == {"topic": {"orders.secret": {}}}, denied
    assert "malformed" not in st.sidecar.read_log()


INCREMENTAL_ALTER_CONFIGS = 44


def incremental_alter_configs_v1(conn, resources):
    """Raw IncrementalAlterConfigs v1: [(type, name, config, value)] ->
    {(type, name): error}."""
    body = kr.array_len(len(resources), True)
    for t, n, k, val in resources:
        body += kr.i8(t) + kr.string(n, True)
        body += kr.array_len(1, True) + kr.string(k, True) + kr.i8(0) + kr.string(val, True)
        body += kr.tags() + kr.tags()
    body += kr.i8(0) + kr.tags()  # validate_only
    r = conn.request(INCREMENTAL_ALTER_CONFIGS, 1, body)
    r.i32()
    out = {}
    for _ in range(r.array_len()):
        err = r.i16()
        r.string()
        out[(r.i8(), r.string().decode())] = err
        r.tags()
    return out


def test_cluster_and_group_configs_are_allowed_only_explicitly(stack_factory):
    """Fail closed on configuration: under the issue's policy nobody has an apiKeys rule, so a
    broker resource of IncrementalAlterConfigs or DescribeConfigs answers
    CLUSTER_AUTHORIZATION_FAILED and another team's group config GROUP_AUTHORIZATION_FAILED;
    none reaches tansu (the request goes on without them) and the connection stays usable."""
    kr.FLEXIBLE.setdefault(INCREMENTAL_ALTER_CONFIGS, 1)
    st = teams_stack(stack_factory)
    with kr.Conn(*direct(st), client_id="check") as d:
        _, versions = kr.api_versions(d)
    assert INCREMENTAL_ALTER_CONFIGS in versions and DESCRIBE_CONFIGS in versions, versions
    with kr.Conn("127.0.0.1", st.sidecar_port, client_id="intruder") as c:
        got = incremental_alter_configs_v1(c, [(4, "0", "log.retention.ms", "1"),
                                               (32, "team-a-orders", "session.timeout.ms", "1")])
        assert got == {(4, "0"): CLUSTER_AUTHORIZATION_FAILED,
                       (32, "team-a-orders"): GROUP_AUTHORIZATION_FAILED}, got
        got = describe_configs_v1(c, [(4, "0"), (8, "0")])
        assert got == {(4, "0"): (CLUSTER_AUTHORIZATION_FAILED, 0),
                       (8, "0"): (CLUSTER_AUTHORIZATION_FAILED, 0)}, got
        assert kr.api_versions(c)[0] == 0  # still usable
    assert "malformed" not in st.sidecar.read_log()
