"""The limiter algorithms: the shared case table and randomized fake-clock sequences, each
run against the Python reference model, the C++ table and the Lua scripts in a real Redis."""

from __future__ import annotations

import json
import pathlib
import random

import pytest
from django_fastcache import _core, limiter
from django_fastcache.limiter import RedisStore
from throttle_support import ALGORITHMS, CODES, Model, redis_client

from tests.redis_servers import RedisServer

CASES = json.loads((pathlib.Path(__file__).parent / "throttle_cases.json").read_text())["cases"]
S = 1_000_000


def policy_of(case_or_args) -> limiter.Policy:
    algorithm, limit, period_us, burst = case_or_args
    return limiter.Policy(limiter.Rate(limit, period_us), algorithm, CODES[algorithm], burst, "t",
                          limit, period_us)


class CppRunner:
    def __init__(self) -> None:
        self.table = _core.Limiter(max_bytes=1 << 20, shards=4)

    def hit(self, key, policy, cost, now):
        allowed, remaining, retry, reset, full = self.table.hit(
            key, policy.code, policy.rate.limit, policy.rate.period_us, policy.burst, cost, now)
        assert not full
        return (int(allowed), remaining, retry, reset)


class LuaRunner:
    def __init__(self, client) -> None:
        self.store = RedisStore(client, None)
        self.client = client
        for text, _sha in limiter._SCRIPTS.values():
            client.script_load(text)

    def hit(self, key, policy, cost, now):
        # The fake clock runs far from real time, so Redis would expire keys by its own
        # clock mid-sequence. The TTL only frees memory (every algorithm compares stored
        # times itself), so in one transaction with the script, read the TTL (its bound
        # is checked) and then drop it, keeping the key for the next fake instant.
        _text, sha = limiter._SCRIPTS[policy.algorithm]
        rkey = self.store.key(key, policy)
        pipe = self.client.pipeline(transaction=True)
        pipe.evalsha(sha, 1, rkey, policy.rate.limit, policy.rate.period_us, policy.burst,
                     cost, now)
        pipe.pttl(rkey)
        pipe.persist(rkey)
        result, ttl_ms, _ = pipe.execute()
        if result[0] == 1:  # a write: its TTL is at most the window
            window = policy.rate.period_us
            if policy.algorithm == "sliding_window":  # reads the previous period's count
                window *= 2
            assert 0 <= ttl_ms <= window // 1000  # 0: under a millisecond left
        return tuple(result)


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["model", "cpp", "lua"])
def runner(request):
    if request.param == "model":
        return None
    if request.param == "cpp":
        return CppRunner()
    client = redis_client(request.getfixturevalue("redis_url"))
    client.flushall()
    return LuaRunner(client)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_shared_case_table(case, runner):
    policy = policy_of((case["algorithm"], case["limit"], case["period_us"], case["burst"]))
    model = Model(case["algorithm"], case["limit"], case["period_us"], case["burst"])
    for i, (now, cost, *expected) in enumerate(case["steps"]):
        got = model.hit(now, cost) if runner is None else runner.hit("case", policy, cost, now)
        assert list(got) == expected, f"step {i} (now={now}, cost={cost})"


def random_sequence(rng: random.Random, algorithm: str, lua: bool = False):
    limit = rng.choice([1, 2, 3, 5, 7, 10])
    # In Redis the TTL is real time: a key written with a TTL of a millisecond or two
    # can expire before the test's next fake instant (see LuaRunner), so the Lua runs use
    # periods of a second or more and no fixed-window write in a window's last 5 ms.
    # The C++ runs cover those.
    period = rng.choice([S, 3 * S, 60 * S] if lua else [1_000, 7_000, S, 3 * S, 60 * S])
    burst = rng.randint(0, limit) if algorithm == "gcra" else 0
    now = rng.choice([0, 1_699_920_000 * S + rng.randrange(86_400 * S)])
    steps = []
    for _ in range(120):
        # Mostly inside one period, sometimes across several, sometimes simultaneous.
        gap = rng.choice([0, rng.randrange(period // 8 + 1), rng.randrange(period + 1),
                          rng.randrange(3 * period + 1)])
        now += gap
        if lua and algorithm == "fixed_window" and now % period > period - 5_000:
            now += period - now % period
        cost = 1 if rng.random() < 0.7 else rng.randint(1, limit + 1)
        steps.append((now, cost))
    return (algorithm, limit, period, burst), steps


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("impl", ["cpp", "lua"])
def test_randomized_sequences_match_the_model(algorithm, impl, request):
    rng = random.Random(f"{algorithm}-{impl}")
    if impl == "cpp":
        target, sequences = CppRunner(), 60
    else:
        client = redis_client(request.getfixturevalue("redis_url"))
        target, sequences = LuaRunner(client), 15
    for n in range(sequences):
        args, steps = random_sequence(rng, algorithm, lua=impl == "lua")
        policy = policy_of(args)
        model = Model(*args)
        key = f"seq{n}"
        for i, (now, cost) in enumerate(steps):
            expected = model.hit(now, cost)
            got = target.hit(key, policy, cost, now)
            assert got == expected, f"sequence {n} {args}, step {i}: now={now} cost={cost}"


# ------------------------------------------------------------ semantics on a fake clock

def max_in_any_window(times: list[int], period: int) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - period:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_fixed_window_allows_twice_the_limit_across_a_boundary():
    table, n, period = CppRunner(), 10, 60 * S
    policy = policy_of(("fixed_window", n, period, 0))
    start = 1_699_920_000 * S  # a window boundary
    times = [start - 1_000 + k for k in range(n + 3)] + [start + k for k in range(n + 3)]
    allowed = [t for t in times if table.hit("k", policy, 1, t)[0]]
    assert len(allowed) == 2 * n
    assert max_in_any_window(allowed, period) == 2 * n


@pytest.mark.parametrize("impl", ["cpp", "lua"])
def test_sliding_log_never_exceeds_the_limit_in_any_window(impl, request):
    if impl == "cpp":
        target = CppRunner()
    else:
        target = LuaRunner(redis_client(request.getfixturevalue("redis_url")))
    rng = random.Random(7)
    n, period = 10, 60 * S
    policy = policy_of(("sliding_log", n, period, 0))
    now, allowed = 1_699_920_000 * S - 5 * S, []
    for _ in range(2000):
        now += rng.choice([0, 1, rng.randrange(2 * S), rng.randrange(20 * S)])
        if target.hit(f"burst-{impl}", policy, 1, now)[0]:
            allowed.append(now)
    assert max_in_any_window(allowed, period) == n
    assert len(allowed) > 3 * n  # the limit was reached again and again, not just once


def test_gcra_spreads_requests_and_bounds_any_window():
    table = CppRunner()
    n, period, burst = 10, 10 * S, 3
    policy = policy_of(("gcra", n, period, burst))
    allowed = [t for t in range(0, 60 * S, 100_000) if table.hit("g", policy, 1, t)[0]]
    # burst at once, then one per emission interval (1 s): burst + 1 per second after.
    assert max_in_any_window(allowed, period) <= burst + n
    assert len(allowed) == burst + 59


def test_invalid_policies_are_rejected_by_the_core():
    table = _core.Limiter()
    with pytest.raises(ValueError, match="period"):
        table.hit("k", 0, 1, 1500, 0, 1, 0)
    with pytest.raises(ValueError, match="burst"):
        table.hit("k", 1, 5, S, 6, 1, 0)
    with pytest.raises(ValueError, match="cost"):
        table.hit("k", 0, 5, S, 0, 0, 0)
    with pytest.raises(ValueError, match="algorithm"):
        table.hit("k", 9, 5, S, 0, 1, 0)


# ---------------------------------------------------------------- the table's memory bound

def test_full_table_evicts_expired_state_first():
    table = _core.Limiter(max_bytes=2048, shards=1)
    for i in range(100):
        allowed, *_ = table.hit(f"short{i}", 3, 5, S, 0, 1, 0)  # fixed window of 1 s
        if not allowed:
            break
    stored = table.stats()["keys"]
    assert 5 <= stored < 100
    # One second later every window has passed: new keys fit again, by eviction.
    for i in range(stored):
        assert table.hit(f"later{i}", 3, 5, S, 0, 1, S)[0]
    stats = table.stats()
    assert stats["evictions"] >= stored
    assert stats["bytes"] <= 2048


def test_full_table_never_resets_a_key_at_its_limit_nor_refuses_a_newcomer():
    table = _core.Limiter(max_bytes=2048, shards=1)
    day = 86_400 * S
    assert table.hit("victim", 0, 1, day, 0, 1, 0)[0]
    assert not table.hit("victim", 0, 1, day, 0, 1, 1)[0]
    for i in range(200):  # fill the table with live day-long state under its limit
        table.hit(f"filler{i}", 3, 5, day, 0, 1, 2)
    assert table.stats()["dropped_live"] > 0
    allowed, remaining, _, _, untracked = table.hit("newcomer", 3, 5, day, 0, 1, 3)
    assert (allowed, remaining, untracked) == (True, 4, False)
    assert table.hit("newcomer", 3, 5, day, 0, 1, 3)[1] == 3  # recorded
    # The victim's state is still there: still denied, with its real wait.
    allowed, _, retry, _, untracked = table.hit("victim", 0, 1, day, 0, 1, 4)
    assert (allowed, untracked) == (False, False)
    assert retry == day - 4


def test_a_log_outgrowing_a_quarter_of_its_shard_is_decided_and_not_kept():
    table = _core.Limiter(max_bytes=4096, shards=1)
    results = [table.hit("log", 0, 10_000, 3600 * S, 0, 1, t) for t in range(1000)]
    stats = table.stats()
    assert all(r[0] for r in results)
    assert stats["untracked"] == sum(r[4] for r in results) > 0
    assert stats["bytes"] <= 4096


def test_each_algorithm_keeps_its_own_state_for_a_key():
    table = _core.Limiter()
    assert table.hit("k", 3, 1, S, 0, 1, 0)[0]
    assert not table.hit("k", 3, 1, S, 0, 1, 1)[0]
    assert table.hit("k", 0, 1, S, 0, 1, 2)[0]  # sliding log: its own state
    assert not table.hit("k", 3, 1, S, 0, 1, 3)[0]  # the fixed window's is untouched
    assert table.reset("k") == 2 and table.reset("k") == 0
