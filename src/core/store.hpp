// The L1 tier: an in-process, sharded, byte- and entry-bounded key/value store with
// per-entry expiry and SIEVE eviction. It stores opaque value handles; the bindings
// supply how to retain and release them, so the store never knows about Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fastcache {

// How the store keeps a value alive. `retain`/`release` are called with whatever lock the
// caller of the store holds (for Python: the GIL), never with a shard lock held, so a
// release that runs arbitrary code (a destructor) may re-enter the store safely.
struct HandleOps {
    void (*retain)(void* handle) noexcept;
    void (*release)(void* handle) noexcept;
};

// A value as the store sees it: an opaque handle, a small tag the bindings interpret
// (for example "immutable, return as is" or "copy on read"), and the bytes it is charged.
struct Value {
    void* handle = nullptr;
    std::uint32_t tag = 0;
    std::size_t charge = 0;
};

// Expiry times are absolute, in the same clock as every `now` passed in (the bindings
// use wall-clock seconds, as Django's LocMemCache does). kNever = no expiry.
inline constexpr double kNever = std::numeric_limits<double>::infinity();

struct StoreConfig {
    std::size_t max_bytes = 64u << 20;      // sum of charges (values + keys + overhead)
    std::size_t max_entries = 1'000'000;    // entry bound, with Django's cull semantics
    unsigned cull_frequency = 3;            // 0: clear all when full; n: cull entries/n
    unsigned shards = 16;                   // rounded up to a power of two
};

struct StoreStats {
    std::uint64_t hits = 0, misses = 0, sets = 0, deletes = 0;
    std::uint64_t evictions = 0, expirations = 0;
    std::uint64_t entries = 0, bytes = 0;
};

// Thread safety: every member function may be called concurrently from any thread.
// Each shard has its own mutex; a call locks at most one shard at a time.
// Complexity: get/set/add/erase/touch are O(1) amortized; eviction is amortized O(1)
// (SIEVE's hand moves over each entry at most twice per insertion on average).
// Exceptions: only std::bad_alloc; the store is unchanged when one escapes.
//
// Eviction: SIEVE (Zhang et al., NSDI 2024). A FIFO queue with one "visited" bit per
// entry and a hand that moves from the oldest entry towards the newest, clearing visited
// bits and evicting the first unvisited entry. A hit only sets a bit: no list
// manipulation, so reads are cheap, and one-hit wonders leave quickly, which is why it
// beats LRU on skewed (Zipf) traffic. Expired entries met by the hand go first.
//
// Bounds: when a new key would take the entry count to max_entries, entries/cull_frequency
// victims are evicted first (Django's MAX_ENTRIES / CULL_FREQUENCY, with SIEVE choosing
// the victims); when the byte total would exceed max_bytes, victims are evicted one at a
// time until it fits. A value whose charge alone exceeds max_bytes is not stored.
class Store {
public:
    Store(StoreConfig config, HandleOps ops);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // On a live entry: marks it visited, retains the handle for the caller and returns it.
    // An expired entry is removed (counted as an expiration) and reported as a miss.
    std::optional<Value> get(std::string_view key, double now);

    // Whether a live entry exists; does not count as a hit or miss and does not retain.
    bool contains(std::string_view key, double now);

    // Inserts or replaces. The store retains `value.handle`. Returns false if the value
    // could not be stored (too large); an older entry under the key is then removed.
    bool set(std::string_view key, Value value, double expires_at, double now);

    // Inserts only if no live entry exists. Returns whether it inserted.
    bool add(std::string_view key, Value value, double expires_at, double now);

    // Atomically replaces a live entry's value by `update(old) -> new`, keeping its
    // expiry. `update` runs under the shard lock: it must not call back into the store.
    // It may throw; the entry is then unchanged. Returns false when no live entry exists.
    // The old handle is released after the lock is dropped.
    bool update(std::string_view key, double now, const std::function<Value(const Value&)>& update);

    bool erase(std::string_view key, double now);  // true if a live entry was removed

    // Sets a live entry's expiry. Returns false when no live entry exists.
    bool touch(std::string_view key, double expires_at, double now);

    // The live entry's expiry (kNever if none), or nullopt when absent/expired.
    std::optional<double> expiry(std::string_view key, double now);

    // A snapshot of live keys (in no particular order).
    std::vector<std::string> keys(double now);

    // Removes every live entry whose key satisfies `pred`; returns how many. `pred` runs
    // under a shard lock and must not call back into the store.
    std::size_t erase_if(double now, const std::function<bool(std::string_view)>& pred);

    void clear();
    StoreStats stats() const;
    const StoreConfig& config() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Redis-style glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), used by keys(pattern)
// and delete_pattern so L1-only and Redis agree on what a pattern means.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace fastcache
