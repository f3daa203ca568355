// The limiter's algorithms and its sharded, memory-bounded table (see limiter.hpp).
// Every formula here has a line-for-line twin in python/django_fastcache/lua/*.lua.
#include "core/limiter.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace fastcache::limiter {

namespace {

constexpr std::int64_t kMaxExact = std::int64_t{1} << 52;  // room for one doubling < 2^53
constexpr std::int64_t kMaxPeriodUs = std::int64_t{1} << 48;  // ~8.9 years
constexpr std::int64_t kMaxLimit = std::int64_t{1} << 40;
constexpr std::int64_t kForever = std::numeric_limits<std::int64_t>::max();

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
        throw std::invalid_argument("period must be a whole number of milliseconds, 1 ms to 2^48 us");
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
    auto left = [&](std::int64_t c) { return std::max<std::int64_t>(0, cap - weighted - c * pm) / pm; };
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
        case Algorithm::SlidingLog: return sliding_log(s, p, cost, now);
        case Algorithm::Gcra: return gcra(s, p, cost, now);
        case Algorithm::SlidingWindow: return sliding_window(s, p, cost, now);
        case Algorithm::FixedWindow: return fixed_window(s, p, cost, now);
    }
    throw std::invalid_argument("unknown algorithm");
}

}  // namespace detail

namespace {

// Accounted per key besides its bytes: the hash node, the State and the map's bucket.
constexpr std::size_t kEntryOverhead = 128;
constexpr std::size_t kLogEntryBytes = sizeof(detail::LogEntry);

std::size_t charge(std::string_view key, const detail::State& s) {
    return kEntryOverhead + key.size() + s.log.size() * kLogEntryBytes;
}

struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, detail::State> map;
    std::size_t bytes = 0;
    // A lower bound on every live entry's expiry: no sweep can free anything earlier.
    std::int64_t next_expiry = kForever;
    LimiterStats stats;
};

}  // namespace

struct Limiter::Impl {
    LimiterConfig config;
    std::size_t shard_budget;
    std::vector<Shard> shards;
    std::size_t mask;

    explicit Impl(LimiterConfig c) : config(c) {
        unsigned n = 1;
        while (n < std::max(1u, c.shards)) n <<= 1;
        config.shards = n;
        shards = std::vector<Shard>(n);
        mask = n - 1;
        shard_budget = std::max<std::size_t>(1, c.max_bytes / n);
    }

    Shard& shard_for(std::string_view key) { return shards[std::hash<std::string_view>{}(key) & mask]; }

    // Drops every entry whose state has expired; learns the earliest remaining expiry.
    void sweep(Shard& sh, std::int64_t now) {
        std::int64_t earliest = kForever;
        for (auto it = sh.map.begin(); it != sh.map.end();) {
            if (it->second.expires_at <= now) {
                sh.bytes -= charge(it->first, it->second);
                ++sh.stats.evictions;
                it = sh.map.erase(it);
            } else {
                earliest = std::min(earliest, it->second.expires_at);
                ++it;
            }
        }
        sh.next_expiry = earliest;
    }
};

Limiter::Limiter(LimiterConfig config) : impl_(std::make_unique<Impl>(config)) {}
Limiter::~Limiter() = default;

const LimiterConfig& Limiter::config() const { return impl_->config; }

Decision Limiter::hit(std::string_view key, const Policy& policy, std::int64_t cost,
                      std::int64_t now) {
    validate(policy);
    if (cost < 1) throw std::invalid_argument("cost must be at least 1");
    if (now < 0) throw std::invalid_argument("now must not be negative");
    Shard& sh = impl_->shard_for(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    ++sh.stats.checks;

    // A reused buffer: a lookup allocates no key copy (keys are usually past the small
    // string size). Heterogeneous lookup needs C++20.
    thread_local std::string probe;
    probe.assign(key.data(), key.size());
    auto it = sh.map.find(probe);
    const bool inserted = it == sh.map.end();
    if (inserted) {
        it = sh.map.emplace(std::string(key), detail::State{}).first;
        sh.bytes += charge(key, it->second);
    } else if (it->second.algorithm != policy.algorithm || it->second.expires_at <= now) {
        // Expired state is equivalent to none; another algorithm's state means nothing here.
        sh.bytes -= charge(key, it->second);
        it->second = detail::State{};
        sh.bytes += charge(key, it->second);
    }
    detail::State& s = it->second;
    s.algorithm = policy.algorithm;
    const std::size_t before = charge(key, s);
    const std::int64_t old_expiry = s.expires_at;
    Decision d = detail::step(s, policy, cost, now);
    const std::size_t after = charge(key, s);
    sh.bytes = sh.bytes - before + after;

    if (s.fresh) {
        // Nothing recorded (a denial on a new or restarted key): keep no state for it.
        sh.bytes -= after;
        sh.map.erase(it);
    } else if (d.allowed && (inserted || after > before) && sh.bytes > impl_->shard_budget) {
        if (now >= sh.next_expiry) impl_->sweep(sh, now);
        if (sh.bytes > impl_->shard_budget) {
            // Undo this check's growth rather than evict live state.
            if (inserted) {
                sh.bytes -= after;
                sh.map.erase(it);
            } else {
                s.log.pop_back();
                s.a -= cost;
                s.expires_at = old_expiry;
                sh.bytes -= after - charge(key, s);
                if (s.log.empty()) {
                    sh.bytes -= charge(key, s);
                    sh.map.erase(it);
                }
            }
            ++sh.stats.rejected_full;
            d = Decision{};
            d.full = true;
            d.retry_after_us = sh.next_expiry == kForever ? kNever : std::max<std::int64_t>(1, sh.next_expiry - now);
        }
    }
    if (d.allowed) {
        sh.next_expiry = std::min(sh.next_expiry, s.expires_at);
        ++sh.stats.allowed;
    } else {
        ++sh.stats.denied;
    }
    return d;
}

bool Limiter::reset(std::string_view key) {
    Shard& sh = impl_->shard_for(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(std::string(key));
    if (it == sh.map.end()) return false;
    sh.bytes -= charge(it->first, it->second);
    sh.map.erase(it);
    return true;
}

void Limiter::clear() {
    for (Shard& sh : impl_->shards) {
        std::lock_guard<std::mutex> lock(sh.mu);
        sh.map.clear();
        sh.bytes = 0;
        sh.next_expiry = kForever;
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
        total.rejected_full += sh.stats.rejected_full;
        total.keys += sh.map.size();
        total.bytes += sh.bytes;
    }
    return total;
}

}  // namespace fastcache::limiter
