// The in-process rate limiter: four rate-limiting algorithms as pure step functions on
// integer microseconds, and a sharded, memory-bounded table of per-key state that runs
// one of them atomically per check. The Lua scripts under python/django_fastcache/lua/
// implement the same step functions; one table of cases keeps the two in agreement.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace fastcache::limiter {

enum class Algorithm : std::uint8_t {
    SlidingLog = 0,     // exact: at most `limit` units in any window (now - period, now]
    Gcra = 1,           // generic cell rate: smooth, O(1) state, `burst` units at once
    SlidingWindow = 2,  // two fixed-window counters, the previous one weighted: approximate
    FixedWindow = 3,    // one counter per epoch-aligned period: up to 2x limit at a boundary
};

// What a check asks for. Times are integer microseconds so that every value stays an
// exact integer in a Lua double (< 2^53) and the C++ and Lua decisions agree bit for bit.
struct Policy {
    Algorithm algorithm = Algorithm::SlidingLog;
    std::int64_t limit = 1;      // units per period, >= 1
    std::int64_t period_us = 0;  // a whole number of milliseconds, >= 1 ms
    std::int64_t burst = 0;      // gcra only: units allowed at once, 1..limit (0: = limit)
    // The throttle's scope (a DRF scope, a ratelimit group): state and memory budgets are
    // kept per scope. Configuration, never client input.
    std::string_view scope = {};
};

// Throws std::invalid_argument naming the bad field. Besides the ranges above it requires
// limit * period in milliseconds < 2^53, the sliding window's arithmetic bound.
void validate(const Policy& policy);

// retry_after_us when the cost can never fit (cost > limit, or > burst for gcra).
inline constexpr std::int64_t kNever = -1;

struct Decision {
    bool allowed = false;
    // Units still available after this check (for the RateLimit header); 0 when denied
    // for lack of room; may be > 0 on a denial when the cost exceeds what is left.
    std::int64_t remaining = 0;
    // On a denial: microseconds until this same cost would be allowed if nothing else
    // happened, or kNever. 0 when allowed.
    std::int64_t retry_after_us = 0;
    // Microseconds until the key holds no state (all units available again).
    std::int64_t reset_after_us = 0;
    // The check was decided but its state could not be kept (see Limiter).
    bool untracked = false;
};

namespace detail {

struct LogEntry {
    std::int64_t at;
    std::int64_t cost;
};

// The sliding log's entries, oldest first, in a ring buffer (a deque's 512-byte blocks
// would dominate the memory of small logs).
class Log {
public:
    std::size_t size() const { return count_; }
    bool empty() const { return count_ == 0; }
    const LogEntry& operator[](std::size_t i) const {
        return buf_[(head_ + i) & (buf_.size() - 1)];
    }
    const LogEntry& front() const { return (*this)[0]; }
    const LogEntry& back() const { return (*this)[count_ - 1]; }
    std::size_t capacity() const { return buf_.size(); }
    void push_back(LogEntry e);
    void pop_front();
    void pop_back() { --count_; }
    void clear();

private:
    std::vector<LogEntry> buf_;  // capacity is 0 or a power of two
    std::size_t head_ = 0, count_ = 0;
};

// Per-key state. The counters' meaning depends on the algorithm:
//   gcra: a = theoretical arrival time (TAT)
//   fixed_window: a = window start, b = count
//   sliding_window: a = window start, b = count in it, c = count in the previous window
//   sliding_log: a = total cost in `log`
struct State {
    Algorithm algorithm = Algorithm::SlidingLog;
    bool fresh = true;  // no request recorded yet
    std::int64_t a = 0, b = 0, c = 0;
    Log log;
    std::int64_t expires_at = 0;  // from then on the state is equivalent to a fresh one
};

// The algorithms. Each updates `state` only when it allows, except that expired log
// entries are dropped (which changes no decision). Sets state.expires_at.
Decision sliding_log(State& state, const Policy& p, std::int64_t cost, std::int64_t now);
Decision gcra(State& state, const Policy& p, std::int64_t cost, std::int64_t now);
Decision sliding_window(State& state, const Policy& p, std::int64_t cost, std::int64_t now);
Decision fixed_window(State& state, const Policy& p, std::int64_t cost, std::int64_t now);
Decision step(State& state, const Policy& p, std::int64_t cost, std::int64_t now);

}  // namespace detail

struct LimiterConfig {
    std::size_t max_bytes = 64u << 20;  // bound on the accounted bytes of all state
    unsigned shards = 16;               // rounded up to a power of two
};

struct LimiterStats {
    std::uint64_t checks = 0, allowed = 0, denied = 0;
    std::uint64_t evictions = 0;     // expired state reclaimed
    std::uint64_t dropped_live = 0;  // live state under its limit dropped to make room
    std::uint64_t untracked = 0;     // checks whose state could not be kept (see Limiter)
    std::uint64_t keys = 0, bytes = 0;
    std::uint64_t pinned_keys = 0, pinned_bytes = 0;  // state at its limit (never dropped)
};

// A 128-bit keyed digest (SipHash-2-4 with its 128-bit output) of `data` under `key`.
struct Digest {
    std::uint64_t lo = 0, hi = 0;
    bool operator==(const Digest& o) const { return lo == o.lo && hi == o.hi; }
};
Digest siphash128(const std::uint64_t key[2], std::string_view data);

// A table of per-key limiter state.
//
// Identities: a key is stored as its 128-bit SipHash under a random per-table key, never
// as its text, so an entry's size does not depend on the key (an 8 KB header costs what a
// 7-byte address costs). Two keys collide with probability about n^2 / 2^129 for n keys
// (1e-21 for a billion keys), and a client cannot aim at a collision without the table's
// secret. State is kept per (key, scope, algorithm, period): throttles sharing a scope
// but not their algorithm or period never share counters.
//
// Memory: each entry is charged a fixed overhead plus 16 bytes per sliding-log slot;
// each shard may hold max_bytes / shards. An entry at its limit (no unit left) is
// "pinned" until its state expires: it is never dropped before then, since dropping it
// would hand its client a fresh quota. Every other entry sits in its scope's LRU list.
// When a check needs room: expired pinned state is reclaimed first (an expiry wheel of
// one-second buckets, so reclaiming costs O(1) amortized per entry, never a sweep), then
// the least recently used unpinned entry of the scope holding the most bytes in the shard
// is dropped (a flooded scope pays for its own flood; a dropped entry was under its limit,
// so its client gains at most one quota). Pinned state may fill at most 3/4 of a shard,
// and a scope's pinned state at most its share of that (3/4 of the shard divided by the
// number of scopes the table has seen): beyond, an entry at its limit stays in the LRU
// list like any other. So a quarter of every shard is always free or droppable, and a new
// client is always checked and recorded as if the table were empty, whatever other
// clients did. The one exception is a single entry larger than that quarter (a sliding
// log of more than max_bytes / shards / 64 slots): it is decided and then not kept
// (`untracked`); use gcra or sliding_window for such limits.
//
// Thread safety: every member may be called concurrently; a check locks one shard (keys
// are spread over shards by digest), so a check is atomic with respect to its key.
// Complexity: hit() and peek() are O(1) amortized plus one digest of the key (O(key
// length)); dropping state for room scans the scopes present in the shard (a handful).
// Exceptions: std::invalid_argument for a bad policy, cost < 1 or now < 0;
// std::length_error beyond 65,536 distinct (scope, algorithm, period); std::bad_alloc.
class Limiter {
public:
    explicit Limiter(LimiterConfig config = {});
    ~Limiter();
    Limiter(const Limiter&) = delete;
    Limiter& operator=(const Limiter&) = delete;

    // One atomic check: records `cost` units when allowed.
    Decision hit(std::string_view key, const Policy& policy, std::int64_t cost,
                 std::int64_t now_us);
    // The decision hit() would take for `cost` units, recording nothing: `remaining` is
    // what is left now (not after spending), `reset_after_us` when all of it is back.
    Decision peek(std::string_view key, const Policy& policy, std::int64_t cost,
                  std::int64_t now_us);
    // The times of the sliding log of `key` under `policy` still inside the window at
    // `now_us`, newest first, each repeated once per unit of cost (DRF's `history`); empty
    // for another algorithm or no state. Records nothing. O(units in the window).
    std::vector<std::int64_t> history(std::string_view key, const Policy& policy,
                                      std::int64_t now_us);
    // Drops the key's state under one policy (scope, algorithm, period); true if it had
    // some.
    bool reset(std::string_view key, const Policy& policy);
    // Drops the key's state under every policy used with this table; the count dropped.
    std::size_t reset(std::string_view key);
    void clear();
    LimiterStats stats() const;
    const LimiterConfig& config() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace fastcache::limiter
