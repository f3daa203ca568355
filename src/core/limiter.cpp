// The limiter's algorithms and its sharded, memory-bounded table (see limiter.hpp).
// Every formula here has a line-for-line twin in python/django_fastcache/lua/*.lua.
#include "core/limiter.hpp"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace fastcache::limiter {

namespace {

constexpr std::int64_t kMaxExact = std::int64_t{1} << 52;     // room for one doubling < 2^53
constexpr std::int64_t kMaxPeriodUs = std::int64_t{1} << 48;  // ~8.9 years
constexpr std::int64_t kMaxLimit = std::int64_t{1} << 40;

// Times and counts are never negative here (validated), so / is floor division.
std::int64_t window_start(std::int64_t now, std::int64_t period) { return now - now % period; }

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

std::int64_t burst_of(const Policy& p) { return p.burst > 0 ? p.burst : p.limit; }

}  // namespace

void validate(const Policy& p) {
    if (static_cast<unsigned>(p.algorithm) > 3) throw std::invalid_argument("unknown algorithm");
    if (p.limit < 1 || p.limit > kMaxLimit)
        throw std::invalid_argument("limit must be between 1 and 2^40");
    if (p.period_us < 1000 || p.period_us % 1000 != 0 || p.period_us > kMaxPeriodUs)
        throw std::invalid_argument(
            "period must be a whole number of milliseconds, 1 ms to 2^48 us");
    if (p.limit > kMaxExact / (p.period_us / 1000))
        throw std::invalid_argument("limit * period in milliseconds must be below 2^52");
    if (p.burst < 0 || p.burst > p.limit)
        throw std::invalid_argument("burst must be between 1 and the limit (0: the limit)");
}

namespace detail {

void Log::push_back(LogEntry e) {
    if (count_ == buf_.size()) {
        std::vector<LogEntry> bigger(buf_.empty() ? 4 : buf_.size() * 2);
        for (std::size_t i = 0; i < count_; ++i) bigger[i] = (*this)[i];
        buf_.swap(bigger);
        head_ = 0;
    }
    buf_[(head_ + count_) & (buf_.size() - 1)] = e;
    ++count_;
}

void Log::pop_front() {
    head_ = (head_ + 1) & (buf_.size() - 1);
    if (--count_ == 0) clear();
}

void Log::clear() {
    std::vector<LogEntry>().swap(buf_);
    head_ = count_ = 0;
}

// Exact "at most limit units in any window (now - period, now]", DRF's semantics: an
// entry stops counting once now - period >= its time. A denial names the instant the
// oldest entries whose expiry makes room for `cost` leave the window.
Decision sliding_log(State& s, const Policy& p, std::int64_t cost, std::int64_t now) {
    const std::int64_t period = p.period_us, limit = p.limit, horizon = now - p.period_us;
    Log& log = s.log;
    if (!log.empty() && log.back().at <= horizon) {
        log.clear();
        s.a = 0;
    }
    while (!log.empty() && log.front().at <= horizon) {
        s.a -= log.front().cost;
        log.pop_front();
    }
    const std::int64_t total = s.a;
    const std::int64_t reset = log.empty() ? 0 : log.back().at + period - now;
    Decision d;
    if (cost > limit) {
        d.remaining = limit - total;
        d.retry_after_us = kNever;
        d.reset_after_us = reset;
    } else if (total + cost <= limit) {
        log.push_back({now, cost});
        s.a = total + cost;
        s.fresh = false;
        d.allowed = true;
        d.remaining = limit - s.a;
        d.reset_after_us = period;
    } else {
        const std::int64_t need = total + cost - limit;  // units that must leave first
        std::int64_t acc = 0;
        for (std::size_t i = 0; i < log.size(); ++i) {
            acc += log[i].cost;
            if (acc >= need) {
                d.retry_after_us = log[i].at + period - now;
                break;
            }
        }
        d.remaining = limit - total;
        d.reset_after_us = reset;
    }
    s.expires_at = log.empty() ? now : log.back().at + period;
    return d;
}

// GCRA (ATM's virtual scheduling): each unit advances a theoretical arrival time (TAT) by
// the emission interval T = period / limit, rounded up to a whole microsecond so that C++
// and Lua share one integer (the rate is then at most, never more than, limit/period).
// A request is allowed while TAT, after adding its cost, is at most burst * T ahead of now.
Decision gcra(State& s, const Policy& p, std::int64_t cost, std::int64_t now) {
    const std::int64_t t = ceil_div(p.period_us, p.limit);
    const std::int64_t tolerance = burst_of(p) * t;
    const std::int64_t tat = std::max(s.a, now);
    Decision d;
    const std::int64_t room = std::max<std::int64_t>(0, (tolerance - (tat - now)) / t);
    if (cost > burst_of(p)) {
        d.remaining = room;
        d.retry_after_us = kNever;
        d.reset_after_us = tat - now;
    } else {
        const std::int64_t new_tat = tat + cost * t;
        const std::int64_t allow_at = new_tat - tolerance;
        if (now >= allow_at) {
            s.a = new_tat;
            s.fresh = false;
            d.allowed = true;
            d.remaining = (now - allow_at) / t;
            d.reset_after_us = new_tat - now;
        } else {
            d.remaining = room;
            d.retry_after_us = allow_at - now;
            d.reset_after_us = tat - now;
        }
    }
    s.expires_at = std::max(s.a, now);
    return d;
}

// Fixed windows aligned on multiples of the period since the epoch. Cheap and simple;
// a client can spend a full quota at the end of one window and again at the start of the
// next, so up to 2x limit in a span of one period.
Decision fixed_window(State& s, const Policy& p, std::int64_t cost, std::int64_t now) {
    const std::int64_t period = p.period_us, limit = p.limit;
    const std::int64_t ws = window_start(now, period);
    const std::int64_t count = (!s.fresh && s.a == ws) ? s.b : 0;
    const std::int64_t window_left = ws + period - now;
    Decision d;
    if (cost > limit) {
        d.remaining = limit - count;
        d.retry_after_us = kNever;
        d.reset_after_us = count > 0 ? window_left : 0;
    } else if (count + cost <= limit) {
        s.a = ws;
        s.b = count + cost;
        s.fresh = false;
        d.allowed = true;
        d.remaining = limit - s.b;
        d.reset_after_us = window_left;
    } else {
        d.remaining = limit - count;
        d.retry_after_us = window_left;
        d.reset_after_us = window_left;
    }
    s.expires_at = (!s.fresh && s.a == ws) ? ws + period : now;
    return d;
}

// Two counters (Cloudflare's "sliding window"): the count of the current fixed window
// plus the previous window's count weighted by how much of it the sliding window still
// covers, assuming the previous window's requests were evenly spread. That assumption is
// the approximation; it is exact for evenly spread traffic and needs O(1) state. Weights
// are computed in whole milliseconds so every product stays an exact integer below 2^53.
Decision sliding_window(State& s, const Policy& p, std::int64_t cost, std::int64_t now) {
    const std::int64_t period = p.period_us, limit = p.limit, pm = p.period_us / 1000;
    const std::int64_t ws = window_start(now, period);
    std::int64_t cur = 0, prev = 0;
    if (!s.fresh) {
        if (s.a == ws) {
            cur = s.b;
            prev = s.c;
        } else if (s.a == ws - period) {
            prev = s.b;
        }
    }
    const std::int64_t elapsed_ms = (now - ws) / 1000;
    const std::int64_t weighted = prev * (pm - elapsed_ms);
    const std::int64_t cap = limit * pm;
    auto left = [&](std::int64_t c) {
        return std::max<std::int64_t>(0, cap - weighted - c * pm) / pm;
    };
    auto reset = [&](std::int64_t c, std::int64_t pr) -> std::int64_t {
        if (c > 0) return ws + 2 * period - now;
        if (pr > 0) return ws + period - now;
        return 0;
    };
    Decision d;
    if (cost > limit) {
        d.remaining = left(cur);
        d.retry_after_us = kNever;
        d.reset_after_us = reset(cur, prev);
    } else if (weighted + (cur + cost) * pm <= cap) {
        s.a = ws;
        s.b = cur + cost;
        s.c = prev;
        s.fresh = false;
        d.allowed = true;
        d.remaining = left(s.b);
        d.reset_after_us = ws + 2 * period - now;
    } else {
        // The first whole millisecond at which the weighted previous count has shrunk
        // enough: in this window if the cost fits beside the current count, else in the
        // next one, where the current count becomes the previous.
        if (cur + cost <= limit) {
            const std::int64_t at_ms = pm - (limit - cur - cost) * pm / prev;
            d.retry_after_us = ws + at_ms * 1000 - now;
        } else {
            const std::int64_t at_ms = pm - (limit - cost) * pm / cur;
            d.retry_after_us = ws + period + at_ms * 1000 - now;
        }
        d.remaining = left(cur);
        d.reset_after_us = reset(cur, prev);
    }
    if (s.fresh) {
        s.expires_at = now;
    } else {
        // Recompute from the stored counters: the previous count matters until the end
        // of the window after the stored one.
        s.expires_at = s.b > 0 ? s.a + 2 * period : s.a + period;
    }
    return d;
}

Decision step(State& s, const Policy& p, std::int64_t cost, std::int64_t now) {
    switch (p.algorithm) {
        case Algorithm::SlidingLog:
            return sliding_log(s, p, cost, now);
        case Algorithm::Gcra:
            return gcra(s, p, cost, now);
        case Algorithm::SlidingWindow:
            return sliding_window(s, p, cost, now);
        case Algorithm::FixedWindow:
            return fixed_window(s, p, cost, now);
    }
    throw std::invalid_argument("unknown algorithm");
}

}  // namespace detail

// ------------------------------------------------------------------------- the digest

namespace {

std::uint64_t rotl(std::uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

struct Sip {
    std::uint64_t v0, v1, v2, v3;
    void round() {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    }
    void absorb(std::uint64_t m) {
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
};

std::uint64_t load_le(const unsigned char* p, std::size_t n) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
    return v;
}

}  // namespace

// SipHash-2-4 (Aumasson and Bernstein) in its 128-bit output variant: a keyed PRF, so
// clients who do not know the key can neither predict digests nor aim at collisions.
Digest siphash128(const std::uint64_t key[2], std::string_view data) {
    Sip s{key[0] ^ 0x736f6d6570736575ULL, key[1] ^ 0x646f72616e646f6dULL ^ 0xee,
          key[0] ^ 0x6c7967656e657261ULL, key[1] ^ 0x7465646279746573ULL};
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    const std::size_t n = data.size(), whole = n & ~std::size_t{7};
    for (std::size_t i = 0; i < whole; i += 8) s.absorb(load_le(p + i, 8));
    s.absorb(load_le(p + whole, n - whole) | (std::uint64_t{n & 0xff} << 56));
    s.v2 ^= 0xee;
    for (int i = 0; i < 4; ++i) s.round();
    Digest d;
    d.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    s.v1 ^= 0xdd;
    for (int i = 0; i < 4; ++i) s.round();
    d.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    return d;
}

// -------------------------------------------------------------------------- the table

namespace {

constexpr std::size_t kSlotBytes = sizeof(detail::LogEntry);
constexpr std::uint32_t kMaxTags = 1u << 16;
// The expiry wheel's bucket width: 2^20 us, about one second. Pinned state is reclaimed
// at most one bucket after it expired; it was no longer protecting anything then.
constexpr int kBucketShift = 20;
constexpr std::int64_t kNotPinned = -1;

// A (scope, algorithm, period) this table has seen, numbered in order of appearance.
struct Tag {
    std::string scope;
    Algorithm algorithm;
    std::int64_t period_us;
    std::uint32_t scope_index;
};

struct EntryKey {
    Digest digest;
    std::uint32_t tag;
    bool operator==(const EntryKey& o) const { return digest == o.digest && tag == o.tag; }
};

struct EntryKeyHash {
    std::size_t operator()(const EntryKey& k) const {
        // The digest is already uniform; its low word picks the shard, so mix the high one.
        return static_cast<std::size_t>(k.digest.hi ^
                                        (std::uint64_t{k.tag} * 0x9E3779B97F4A7C15ULL));
    }
};

struct Entry;

// An intrusive doubly linked list (most recent first).
struct List {
    Entry* head = nullptr;
    Entry* tail = nullptr;
};

struct Entry {
    detail::State state;
    Entry* prev = nullptr;
    Entry* next = nullptr;
    std::int64_t bucket = kNotPinned;  // the expiry-wheel bucket when pinned
    const EntryKey* key = nullptr;     // the map's own copy
    std::uint32_t scope = 0;
    std::size_t charged = 0;
};

void link_front(List& l, Entry* e) {
    e->prev = nullptr;
    e->next = l.head;
    if (l.head) l.head->prev = e;
    l.head = e;
    if (!l.tail) l.tail = e;
}

void unlink(List& l, Entry* e) {
    (e->prev ? e->prev->next : l.head) = e->next;
    (e->next ? e->next->prev : l.tail) = e->prev;
    e->prev = e->next = nullptr;
}

// One entry's fixed charge: its hash node (the key and Entry, the node's link and cached
// hash), the bucket array's slot and the allocator's header. A sliding log's buffer is
// charged by capacity, with its own allocation header.
constexpr std::size_t kMallocHeader = 16;
constexpr std::size_t kEntryOverhead =
    sizeof(std::pair<const EntryKey, Entry>) + 2 * sizeof(void*) + kMallocHeader + sizeof(void*);

std::size_t charge_of(const detail::State& s) {
    const std::size_t slots = s.log.capacity();
    return kEntryOverhead + (slots ? slots * kSlotBytes + kMallocHeader : 0);
}

struct ScopeUse {
    List lru;  // unpinned entries
    std::size_t bytes = 0, pinned_bytes = 0;
};

struct Shard {
    std::mutex mu;
    std::unordered_map<EntryKey, Entry, EntryKeyHash> map;
    std::vector<ScopeUse> scopes;        // by scope index, grown on demand
    std::map<std::int64_t, List> wheel;  // pinned entries by expiry bucket
    std::size_t bytes = 0, pinned_bytes = 0, pinned_keys = 0;
    LimiterStats stats;
};

}  // namespace

struct Limiter::Impl {
    LimiterConfig config;
    std::size_t shard_budget;
    std::size_t pin_budget;  // 3/4 of a shard
    std::vector<Shard> shards;
    std::size_t mask;
    std::uint64_t secret[2];

    // Tags and scopes, numbered in order of appearance, under tags_mu (a check finds its
    // tag through a thread-local cache, without the lock).
    mutable std::mutex tags_mu;
    std::deque<Tag> tags;
    std::unordered_map<std::string, std::uint32_t> tag_ids;  // scope \0 algorithm period
    std::unordered_map<std::string, std::uint32_t> scope_ids;
    std::atomic<std::uint32_t> tag_count{0};
    std::atomic<std::uint32_t> scope_count{0};
    std::uint64_t generation;  // tells this table's thread-local tag cache from another's

    explicit Impl(LimiterConfig c) : config(c) {
        unsigned n = 1;
        while (n < std::max(1u, c.shards)) n <<= 1;
        config.shards = n;
        shards = std::vector<Shard>(n);
        mask = n - 1;
        shard_budget = std::max<std::size_t>(1, c.max_bytes / n);
        pin_budget = shard_budget / 4 * 3;
        std::random_device rd;
        for (auto& word : secret) word = (std::uint64_t{rd()} << 32) ^ rd();
        static std::atomic<std::uint64_t> generations{1};
        generation = generations.fetch_add(1);
    }

    std::uint32_t tag_of(const Policy& p) {
        // Most checks repeat the last policy of their thread: a one-entry cache per thread.
        struct Last {
            std::uint64_t generation = 0;
            Algorithm algorithm{};
            std::int64_t period_us = 0;
            std::string scope;
            std::uint32_t tag = 0;
        };
        thread_local Last last;
        if (last.generation == generation && last.algorithm == p.algorithm &&
            last.period_us == p.period_us && last.scope == p.scope)
            return last.tag;
        std::string name(p.scope);
        name.push_back('\0');
        name += std::to_string(static_cast<int>(p.algorithm));
        name.push_back(':');
        name += std::to_string(p.period_us);
        std::uint32_t tag;
        {
            std::lock_guard<std::mutex> lock(tags_mu);
            auto it = tag_ids.find(name);
            if (it != tag_ids.end()) {
                tag = it->second;
            } else {
                if (tags.size() >= kMaxTags)
                    throw std::length_error("more than 65536 distinct (scope, algorithm, period)");
                auto scope = scope_ids.emplace(std::string(p.scope), scope_ids.size()).first;
                tag = static_cast<std::uint32_t>(tags.size());
                tags.push_back(Tag{std::string(p.scope), p.algorithm, p.period_us, scope->second});
                tag_ids.emplace(std::move(name), tag);
                scope_count.store(static_cast<std::uint32_t>(scope_ids.size()));
                tag_count.store(tag + 1);
            }
        }
        last.generation = generation;
        last.algorithm = p.algorithm;
        last.period_us = p.period_us;
        last.scope.assign(p.scope.data(), p.scope.size());
        last.tag = tag;
        return tag;
    }

    std::uint32_t scope_index(std::uint32_t tag) {
        std::lock_guard<std::mutex> lock(tags_mu);
        return tags[tag].scope_index;
    }

    Shard& shard_for(const Digest& d) { return shards[d.lo & mask]; }

    static ScopeUse& use_of(Shard& sh, std::uint32_t scope) {
        if (scope >= sh.scopes.size()) sh.scopes.resize(scope + 1);
        return sh.scopes[scope];
    }

    // Takes `e` out of its list (the LRU list or a wheel bucket).
    static void detach(Shard& sh, Entry* e) {
        if (e->bucket == kNotPinned) {
            unlink(sh.scopes[e->scope].lru, e);
            return;
        }
        auto it = sh.wheel.find(e->bucket);
        unlink(it->second, e);
        if (!it->second.head) sh.wheel.erase(it);
        sh.pinned_bytes -= e->charged;
        sh.scopes[e->scope].pinned_bytes -= e->charged;
        --sh.pinned_keys;
        e->bucket = kNotPinned;
    }

    // Puts a detached `e` back: pinned in the wheel when at its limit and there is pin
    // room for its scope, else at the front of its scope's LRU list.
    void attach(Shard& sh, Entry* e, bool at_limit) {
        ScopeUse& use = sh.scopes[e->scope];
        const std::size_t scopes = std::max<std::uint32_t>(1, scope_count.load());
        if (at_limit && sh.pinned_bytes + e->charged <= pin_budget &&
            use.pinned_bytes + e->charged <= pin_budget / scopes) {
            e->bucket = e->state.expires_at >> kBucketShift;
            link_front(sh.wheel[e->bucket], e);
            sh.pinned_bytes += e->charged;
            use.pinned_bytes += e->charged;
            ++sh.pinned_keys;
        } else {
            link_front(use.lru, e);
        }
    }

    void erase(Shard& sh, Entry* e) {
        detach(sh, e);
        sh.bytes -= e->charged;
        sh.scopes[e->scope].bytes -= e->charged;
        sh.map.erase(*e->key);
    }

    // Re-charges `e` after its state changed size.
    static void recharge(Shard& sh, Entry* e) {
        const std::size_t now_charged = charge_of(e->state);
        sh.bytes = sh.bytes - e->charged + now_charged;
        ScopeUse& use = sh.scopes[e->scope];
        use.bytes = use.bytes - e->charged + now_charged;
        if (e->bucket != kNotPinned) {
            sh.pinned_bytes = sh.pinned_bytes - e->charged + now_charged;
            use.pinned_bytes = use.pinned_bytes - e->charged + now_charged;
        }
        e->charged = now_charged;
    }

    // Drops pinned state whose bucket has passed; an entry found there whose state was
    // extended meanwhile moves to its right bucket. O(1) amortized per entry.
    void reclaim(Shard& sh, std::int64_t now) {
        while (!sh.wheel.empty()) {
            auto it = sh.wheel.begin();
            if (((it->first + 1) << kBucketShift) > now) return;
            Entry* e = it->second.tail;
            if (e->state.expires_at <= now) {
                ++sh.stats.evictions;
                erase(sh, e);
            } else {
                detach(sh, e);
                attach(sh, e, true);
            }
        }
    }

    // Frees room for `need` more bytes in the shard without touching `keep`; false when
    // only pinned state (and `keep`) is left.
    bool make_room(Shard& sh, std::size_t need, const Entry* keep, std::int64_t now) {
        if (sh.bytes + need <= shard_budget) return true;
        reclaim(sh, now);
        while (sh.bytes + need > shard_budget) {
            // The scope holding the most bytes with something droppable pays.
            ScopeUse* victim = nullptr;
            for (ScopeUse& use : sh.scopes) {
                Entry* tail = use.lru.tail;
                if (tail && tail == keep) tail = tail->prev;
                if (tail && (!victim || use.bytes > victim->bytes)) victim = &use;
            }
            if (!victim) return false;
            Entry* e = victim->lru.tail == keep ? keep->prev : victim->lru.tail;
            if (e->state.expires_at <= now) {
                ++sh.stats.evictions;
            } else {
                ++sh.stats.dropped_live;
            }
            erase(sh, e);
        }
        return true;
    }
};

Limiter::Limiter(LimiterConfig config) : impl_(std::make_unique<Impl>(config)) {}
Limiter::~Limiter() = default;

const LimiterConfig& Limiter::config() const { return impl_->config; }

namespace {

void check_args(const Policy& policy, std::int64_t cost, std::int64_t now) {
    validate(policy);
    if (cost < 1) throw std::invalid_argument("cost must be at least 1");
    if (now < 0) throw std::invalid_argument("now must not be negative");
}

}  // namespace

Decision Limiter::hit(std::string_view key, const Policy& policy, std::int64_t cost,
                      std::int64_t now) {
    check_args(policy, cost, now);
    Impl& im = *impl_;
    const EntryKey ek{siphash128(im.secret, key), im.tag_of(policy)};
    Shard& sh = im.shard_for(ek.digest);
    std::lock_guard<std::mutex> lock(sh.mu);
    ++sh.stats.checks;

    auto it = sh.map.find(ek);
    Decision d;
    if (it == sh.map.end()) {
        // A new key: decide on fresh state first; keep it only if something was recorded.
        detail::State fresh;
        fresh.algorithm = policy.algorithm;
        d = detail::step(fresh, policy, cost, now);
        if (!fresh.fresh) {
            const std::size_t need = charge_of(fresh);
            if (!im.make_room(sh, need, nullptr, now)) {
                ++sh.stats.untracked;
                d.untracked = true;
            } else {
                const std::uint32_t scope = im.scope_index(ek.tag);
                auto placed = sh.map.emplace(ek, Entry{}).first;
                Entry* e = &placed->second;
                e->key = &placed->first;
                e->state = std::move(fresh);
                e->scope = scope;
                e->charged = need;
                Impl::use_of(sh, scope).bytes += need;
                sh.bytes += need;
                im.attach(sh, e, d.remaining <= 0);
            }
        }
    } else {
        Entry* e = &it->second;
        im.detach(sh, e);
        if (e->state.expires_at <= now) {
            // Expired state is equivalent to none.
            e->state = detail::State{};
            e->state.algorithm = policy.algorithm;
        }
        d = detail::step(e->state, policy, cost, now);
        const std::size_t grown = charge_of(e->state);
        if (e->state.fresh) {
            ++sh.stats.evictions;
            im.attach(sh, e, false);
            im.erase(sh, e);
        } else if (grown > e->charged && !im.make_room(sh, grown - e->charged, e, now)) {
            // Its own state outgrew what the shard can ever give it: decided, not kept.
            ++sh.stats.untracked;
            d.untracked = true;
            im.attach(sh, e, false);
            im.erase(sh, e);
        } else {
            Impl::recharge(sh, e);
            im.attach(sh, e, d.remaining <= 0);
        }
    }
    if (d.allowed) {
        ++sh.stats.allowed;
    } else {
        ++sh.stats.denied;
    }
    return d;
}

Decision Limiter::peek(std::string_view key, const Policy& policy, std::int64_t cost,
                       std::int64_t now) {
    check_args(policy, cost, now);
    Impl& im = *impl_;
    const EntryKey ek{siphash128(im.secret, key), im.tag_of(policy)};
    Shard& sh = im.shard_for(ek.digest);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(ek);
    detail::State fresh;
    fresh.algorithm = policy.algorithm;
    Entry* e = it == sh.map.end() ? nullptr : &it->second;
    detail::State& s = e && e->state.expires_at > now ? e->state : fresh;
    // Each step function, asked for more than the policy can ever allow, reports the room
    // and the reset time and records nothing (a sliding log drops expired entries, which
    // changes no decision); asked for a cost that does not fit, it reports the wait.
    const std::int64_t saved_expiry = s.expires_at;
    Decision d = detail::step(s, policy, policy.limit + 1, now);
    d.retry_after_us = 0;
    if (cost > (policy.algorithm == Algorithm::Gcra ? burst_of(policy) : policy.limit)) {
        d.retry_after_us = kNever;
    } else if (d.remaining >= cost) {
        d.allowed = true;
    } else {
        d.retry_after_us = detail::step(s, policy, cost, now).retry_after_us;
    }
    s.expires_at = std::max(saved_expiry, s.expires_at);
    if (e && &s == &e->state) Impl::recharge(sh, e);
    return d;
}

std::vector<std::int64_t> Limiter::history(std::string_view key, const Policy& policy,
                                           std::int64_t now) {
    check_args(policy, 1, now);
    std::vector<std::int64_t> out;
    if (policy.algorithm != Algorithm::SlidingLog) return out;
    Impl& im = *impl_;
    const EntryKey ek{siphash128(im.secret, key), im.tag_of(policy)};
    Shard& sh = im.shard_for(ek.digest);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(ek);
    if (it == sh.map.end() || it->second.state.expires_at <= now) return out;
    const detail::Log& log = it->second.state.log;
    const std::int64_t horizon = now - policy.period_us;
    for (std::size_t i = log.size(); i-- > 0;) {
        const detail::LogEntry& e = log[i];
        if (e.at <= horizon) break;  // older ones have left the window too
        out.insert(out.end(), static_cast<std::size_t>(e.cost), e.at);
    }
    return out;
}

bool Limiter::reset(std::string_view key, const Policy& policy) {
    validate(policy);
    Impl& im = *impl_;
    const EntryKey ek{siphash128(im.secret, key), im.tag_of(policy)};
    Shard& sh = im.shard_for(ek.digest);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(ek);
    if (it == sh.map.end()) return false;
    im.erase(sh, &it->second);
    return true;
}

std::size_t Limiter::reset(std::string_view key) {
    Impl& im = *impl_;
    const Digest digest = siphash128(im.secret, key);
    const std::uint32_t tags = im.tag_count.load();
    Shard& sh = im.shard_for(digest);
    std::lock_guard<std::mutex> lock(sh.mu);
    std::size_t dropped = 0;
    for (std::uint32_t tag = 0; tag < tags; ++tag) {
        auto it = sh.map.find(EntryKey{digest, tag});
        if (it == sh.map.end()) continue;
        im.erase(sh, &it->second);
        ++dropped;
    }
    return dropped;
}

void Limiter::clear() {
    for (Shard& sh : impl_->shards) {
        std::lock_guard<std::mutex> lock(sh.mu);
        sh.map.clear();
        sh.scopes.clear();
        sh.wheel.clear();
        sh.bytes = sh.pinned_bytes = sh.pinned_keys = 0;
    }
}

LimiterStats Limiter::stats() const {
    LimiterStats total;
    for (Shard& sh : impl_->shards) {
        std::lock_guard<std::mutex> lock(sh.mu);
        total.checks += sh.stats.checks;
        total.allowed += sh.stats.allowed;
        total.denied += sh.stats.denied;
        total.evictions += sh.stats.evictions;
        total.dropped_live += sh.stats.dropped_live;
        total.untracked += sh.stats.untracked;
        total.keys += sh.map.size();
        total.bytes += sh.bytes;
        total.pinned_keys += sh.pinned_keys;
        total.pinned_bytes += sh.pinned_bytes;
    }
    return total;
}

}  // namespace fastcache::limiter
