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
// They are never called with a null handle (a null handle is a valid, unowned value).
struct HandleOps {
    void (*retain)(void* handle) noexcept;
    void (*release)(void* handle) noexcept;
};

// Handles a call gave up but did not release: the caller releases them later, where it may
// (for Python: once it holds the GIL). See the `released` parameters below.
using Released = std::vector<void*>;

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

// Bookkeeping bytes charged per entry on top of `Value::charge` and the key's length: the
// entry node, its hash-table slot and allocator headers, rounded up. An entry's charge is
// `value.charge + key.size() + kEntryOverhead`; that is what counts against max_bytes.
inline constexpr std::size_t kEntryOverhead = 192;

inline std::size_t entry_charge(std::string_view key, const Value& value) noexcept {
    return value.charge + key.size() + kEntryOverhead;
}

struct StoreConfig {
    std::size_t max_bytes = 64u << 20;    // sum of charges (values + keys + overhead)
    std::size_t max_entries = 1'000'000;  // entry bound, with Django's cull semantics
    unsigned cull_frequency = 3;          // 0: clear all when full; n: cull entries/n
    unsigned shards = 16;                 // rounded up to a power of two
};

// Counters since construction (clear() does not reset them), read without locking, so a
// snapshot taken during concurrent calls need not be mutually consistent.
struct StoreStats {
    std::uint64_t hits = 0;         // get() on a live entry
    std::uint64_t misses = 0;       // get() on an absent or expired key
    std::uint64_t sets = 0;         // values stored by set() and add()
    std::uint64_t deletes = 0;      // live entries removed by erase() and erase_if()
    std::uint64_t evictions = 0;    // live entries removed to honour a bound
    std::uint64_t expirations = 0;  // expired entries reclaimed (wherever they were met)
    std::uint64_t entries = 0;      // current entry count (expired, unreclaimed ones included)
    std::uint64_t bytes = 0;        // current sum of entry charges
};

// Thread safety: every member function may be called concurrently from any thread.
// Each shard has its own mutex; a call locks at most one shard at a time.
// Complexity: get/set/add/erase/touch are O(1) amortized; eviction is amortized O(1)
// (SIEVE's hand moves over each entry at most twice per insertion on average).
// Exceptions: only std::bad_alloc (and whatever an `update` callback throws); when one
// escapes, the entry under the key is unchanged and no reference is leaked (entries already
// evicted to make room, and expired entries already reclaimed, stay removed).
//
// Eviction: SIEVE (Zhang et al., NSDI 2024). A FIFO queue with one "visited" bit per
// entry and a hand that moves from the oldest entry towards the newest, clearing visited
// bits and evicting the first unvisited entry. A hit only sets a bit: no list
// manipulation, so reads are cheap, and one-hit wonders leave quickly, which is why it
// beats LRU on skewed (Zipf) traffic. Expired entries met by the hand go first.
//
// Bounds: before a new key is inserted while the entry count is >= max_entries,
// count/cull_frequency victims are evicted (all entries when cull_frequency is 0): Django's
// MAX_ENTRIES / CULL_FREQUENCY, with SIEVE choosing the victims, one shard at a time, from
// shards holding at least their share of entries. Replacing an existing key never culls.
// The count includes expired entries not yet reclaimed, as Django's does. When the byte
// total exceeds max_bytes after a store, victims are evicted one at a time (the writer's
// own shard first) until it fits; the entry just written is never its own victim. A value
// whose charge (entry_charge) exceeds max_bytes is not stored. Both bounds are exact for a
// single writer; concurrent writers may each pass the check before either evicts, so the
// entry count can exceed max_entries by at most the number of concurrent writers.
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

    // Inserts or replaces. The store retains `value.handle` (the caller keeps its own
    // reference). Returns false if the value could not be stored (too large); an older
    // entry under the key is then removed (counted as an eviction). Replacing an entry
    // keeps its place in the eviction queue and counts as a visit.
    //
    // `released`, here and in erase() and clear(): when not null, every handle the call gives
    // up (a replaced or evicted value, the caller's value when not stored) is appended to it
    // instead of being released, so a thread that may not release (one without the GIL) can
    // still remove entries, and a caller holding a lock of its own can release after it.
    bool set(std::string_view key, Value value, double expires_at, double now,
             Released* released = nullptr);

    // Inserts only if no live entry exists (an expired one is replaced). Returns whether it
    // inserted; like set(), the store retains `value.handle` only when it inserts.
    bool add(std::string_view key, Value value, double expires_at, double now);

    // Atomically replaces a live entry's value by `update(old) -> new`, keeping its
    // expiry. `update` runs under the shard lock: it must not call back into the store.
    // Ownership: `old` is borrowed (retain it inside the callback if it must outlive the
    // call). The returned Value's handle must already carry one reference, which the store
    // takes over (the store does not retain it). It may throw; the entry is then unchanged
    // and no reference is taken. Returns false when no live entry exists (the callback is
    // then not called). The old handle is released after the lock is dropped. If the new
    // value is too large to store, the entry is removed (an eviction) and the new handle
    // released; update still returns true, as the old value is gone.
    bool update(std::string_view key, double now, const std::function<Value(const Value&)>& update);

    // true if a live entry was removed
    bool erase(std::string_view key, double now, Released* released = nullptr);

    // Sets a live entry's expiry. Returns false when no live entry exists.
    bool touch(std::string_view key, double expires_at, double now);

    // The live entry's expiry (kNever if none), or nullopt when absent/expired.
    std::optional<double> expiry(std::string_view key, double now);

    // A snapshot of live keys (in no particular order).
    std::vector<std::string> keys(double now);

    // Removes every live entry whose key satisfies `pred`; returns how many. `pred` runs
    // under a shard lock and must not call back into the store.
    std::size_t erase_if(double now, const std::function<bool(std::string_view)>& pred);

    // Removes every entry (not counted as deletes or evictions).
    void clear(Released* released = nullptr);
    StoreStats stats() const;
    // The effective configuration (shards rounded up to a power of two, at least 1).
    const StoreConfig& config() const;

    // For tests: walks every shard (one lock at a time) and returns a description of the
    // first broken internal invariant (queue vs index, per-shard and global counts and
    // bytes), or an empty string. Totals are only comparable when no call runs meanwhile.
    std::string check_invariants() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Redis-style glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), used by keys(pattern)
// and delete_pattern so L1-only and Redis agree on what a pattern means. As in Redis: a
// reversed range `[z-a]` means `[a-z]`, `\` escapes inside a class too, a class left open
// at the end of the pattern closes there, `[]` matches nothing, a trailing `\` matches
// itself. One extension: `[!a-z]` negates like `[^a-z]` (Redis reads that `!` as a
// literal). Byte-wise, case-sensitive, O(|pattern| * |text|) time, no recursion.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace fastcache
