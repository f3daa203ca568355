// What keeps an L1 store in front of a shared server coherent: whether the L1 may be used
// at all, and the per-bucket tokens that decide which fills from the server may enter it.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <string_view>

#include "core/store.hpp"

namespace fastcache {

struct CoherenceStats {
    std::uint64_t invalidated = 0;  // keys invalidated (by the listener or a local write)
    std::uint64_t resets = 0;       // whole-L1 resets (flushes, listener down or back up)
    std::uint64_t fills = 0;        // values put into the L1 by a read or a write
    std::uint64_t refused = 0;      // fills refused: an invalidation or another fill raced them
};

// The rules (the "fill race"): a reader that misses the L1 takes the key's token before it
// sends its read to the server and offers the value it got with that token. Final keys are
// hashed into kBuckets buckets, each with a counter; the token is the counter's value.
// Every change that concerns a key bumps its bucket's counter, under the bucket's lock and
// in the same critical section as the store change:
//   - invalidate(): a key changed elsewhere (a tracking message) or here; the entry is erased;
//   - fill(): a value read from the server is stored only if the L1 is usable and the
//     counter still equals the token; stored or not, the counter is bumped, and a refused
//     fill erases the entry too;
//   - write(): this process wrote the key; the written value replaces the entry if the
//     counter still equals the token taken before the write was sent, else it is erased;
//   - reset(): every counter is bumped and the store cleared (a flush, the listener down or
//     back up); `usable` says whether the L1 may be used from then on.
// What this guarantees, given a server whose reads and writes are linearizable and a
// listener that delivers every invalidation of a write that completed (or that reset()s):
//   1. A fill never survives an invalidation that arrived after its token was taken: the
//      bump refuses it, or, if it was stored first, the erase removes it.
//   2. Exactly one fill per token wins, and a fill wins only if no other fill, write or
//      invalidation of its bucket completed since its token was taken, so every read that
//      started after a read R returned sees a value at least as new as R's (monotonic reads
//      within the process): a later winner read the server after R's fill (or refusal)
//      bumped the counter, and a refused fill erases the entry that could be older.
// Callers must offer every value they read from the server with a token to fill() (a
// value they do not want kept, as too large, goes to invalidate() instead), or rule 2 no
// longer covers that read.
//
// Thread safety: every member may be called from any thread. fill(), write(),
// invalidate() and reset() lock one bucket stripe at a time (reset() each in turn); token()
// and usable() are lock-free loads. Handles the store gives up are never released here:
// they are appended to the caller's `released`, so a caller without the right to release
// (no GIL) can still invalidate, and no release (which may run arbitrary code) happens
// under a stripe lock. Complexity: O(1) per key apart from the store's own cost; reset() is
// O(kBuckets + entries). Exceptions: std::bad_alloc from the store; the counters are then
// bumped and the entry gone or unchanged, never a stale entry kept.
class Coherence {
public:
    static constexpr std::size_t kBuckets = 4096;
    static constexpr std::size_t kStripes = 256;
    using Token = std::uint64_t;

    explicit Coherence(Store& store) noexcept : store_(store) {}
    Coherence(const Coherence&) = delete;
    Coherence& operator=(const Coherence&) = delete;

    static std::size_t bucket(std::string_view key) noexcept;

    // The key's token, to take before a read (or write) is sent to the server.
    Token token(std::string_view key) const noexcept {
        return seq_[bucket(key)].load(std::memory_order_acquire);
    }
    bool usable() const noexcept { return usable_.load(std::memory_order_acquire); }

    // A value read from the server under `token`; see the rules above. Returns whether it
    // was stored. `value.charge` above `max_charge` is refused (and its key erased).
    bool fill(std::string_view key, const Value& value, double expires_at, double now, Token token,
              std::size_t max_charge, Released& released);

    // After this process's own write returned: `value` (null: the written value is not to
    // be kept) replaces the entry if `token` still holds, else the entry is erased.
    bool write(std::string_view key, const Value* value, double expires_at, double now, Token token,
               Released& released);

    void invalidate(std::string_view key, double now, Released& released);
    void reset(bool usable, Released& released);

    // Marks the L1 unusable and bumps every counter without touching the store: what a
    // forked child can do before its runtime is ready to release handles. The store keeps
    // its entries (unusable, so never read) until the next reset().
    void disable_without_store() noexcept;

    CoherenceStats stats() const noexcept;

    // Handles given up by a thread that may not release them (the native listener): kept
    // here until a thread that may (bindings: one holding the GIL) takes them with
    // exhume(). `buried()` is a cheap check for the hot path.
    void bury(Released& handles);
    bool buried() const noexcept { return buried_.load(std::memory_order_acquire); }
    Released exhume();
    // After fork() in the child: the graveyard's lock may have been held by a thread that
    // does not exist there; the handles stay buried.
    void reinit_after_fork() noexcept;

private:
    std::mutex& stripe(std::size_t b) noexcept { return stripes_[b % kStripes].mu; }

    struct alignas(64) Stripe {
        std::mutex mu;
    };

    Store& store_;
    std::atomic<bool> usable_{true};
    std::array<std::atomic<std::uint64_t>, kBuckets> seq_{};
    std::array<Stripe, kStripes> stripes_;
    std::atomic<std::uint64_t> invalidated_{0}, resets_{0}, fills_{0}, refused_{0};
    std::atomic<bool> buried_{false};
    std::mutex graveyard_mu_;
    Released graveyard_;
};

}  // namespace fastcache
