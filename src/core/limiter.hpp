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
    // Denied only because the table was full of live state (see Limiter).
    bool full = false;
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
    const LogEntry& operator[](std::size_t i) const { return buf_[(head_ + i) & (buf_.size() - 1)]; }
    const LogEntry& front() const { return (*this)[0]; }
    const LogEntry& back() const { return (*this)[count_ - 1]; }
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
    std::uint64_t evictions = 0;      // expired state dropped to make room
    std::uint64_t rejected_full = 0;  // denials because live state filled the table
    std::uint64_t keys = 0, bytes = 0;
};

// A table of per-key limiter state.
//
// Thread safety: every member may be called concurrently; a check locks one shard (keys
// are spread over shards by hash), so a check is atomic with respect to its key.
// Complexity: hit() is O(1) amortized for every algorithm (a sliding log drops each
// entry once; the denial path walks at most the entries that must expire). A sweep of a
// full shard is O(shard size) and runs at most once per expiry instant it learns of.
// Memory: each key is charged its key, a fixed overhead and 16 bytes per log entry;
// each shard may hold max_bytes / shards. When an allowed check needs room that is not
// there, state whose window has passed is dropped first; a live key is never evicted
// (that would silently reset its limit): instead the check is denied with `full` set and
// retry_after_us = when the earliest live state in the shard expires.
// Changing the algorithm used with a key restarts that key's state.
// Exceptions: std::invalid_argument for a bad policy, cost < 1 or now < 0; std::bad_alloc.
class Limiter {
public:
    explicit Limiter(LimiterConfig config = {});
    ~Limiter();
    Limiter(const Limiter&) = delete;
    Limiter& operator=(const Limiter&) = delete;

    Decision hit(std::string_view key, const Policy& policy, std::int64_t cost,
                 std::int64_t now_us);
    bool reset(std::string_view key);  // true if the key had state
    void clear();
    LimiterStats stats() const;
    const LimiterConfig& config() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace fastcache::limiter
