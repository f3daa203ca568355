// The coherence rules of coherence.hpp: tokens per bucket, guarded fills and writes.
#include "core/coherence.hpp"

#include <functional>

namespace fastcache {

std::size_t Coherence::bucket(std::string_view key) noexcept {
    return std::hash<std::string_view>{}(key) & (kBuckets - 1);
}

bool Coherence::fill(std::string_view key, const Value& value, double expires_at, double now,
                     Token token, std::size_t max_charge, Released& released) {
    const std::size_t b = bucket(key);
    std::lock_guard<std::mutex> lock(stripe(b));
    const bool wins =
        usable() && seq_[b].load(std::memory_order_relaxed) == token && value.charge <= max_charge;
    // Bumped first: if the store throws, later fills of this bucket are refused anyway.
    seq_[b].fetch_add(1, std::memory_order_acq_rel);
    if (wins && store_.set(key, value, expires_at, now, &released)) {
        fills_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    refused_.fetch_add(1, std::memory_order_relaxed);
    store_.erase(key, now, &released);
    return false;
}

bool Coherence::write(std::string_view key, const Value* value, double expires_at, double now,
                      Token token, Released& released) {
    const std::size_t b = bucket(key);
    std::lock_guard<std::mutex> lock(stripe(b));
    const bool fresh =
        value != nullptr && usable() && seq_[b].load(std::memory_order_relaxed) == token;
    seq_[b].fetch_add(1, std::memory_order_acq_rel);
    if (fresh && store_.set(key, *value, expires_at, now, &released)) {
        fills_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    store_.erase(key, now, &released);
    return false;
}

void Coherence::invalidate(std::string_view key, double now, Released& released) {
    const std::size_t b = bucket(key);
    std::lock_guard<std::mutex> lock(stripe(b));
    seq_[b].fetch_add(1, std::memory_order_acq_rel);
    invalidated_.fetch_add(1, std::memory_order_relaxed);
    store_.erase(key, now, &released);
}

void Coherence::reset(bool now_usable, Released& released) {
    // Going down: unusable first, so no reader trusts the store while it is emptied. Coming
    // up: usable last, once every token taken before is void and the store is empty.
    if (!now_usable) usable_.store(false, std::memory_order_release);
    for (std::size_t s = 0; s < kStripes; ++s) {
        std::lock_guard<std::mutex> lock(stripes_[s].mu);
        for (std::size_t b = s; b < kBuckets; b += kStripes) {
            seq_[b].fetch_add(1, std::memory_order_acq_rel);
        }
    }
    resets_.fetch_add(1, std::memory_order_relaxed);
    store_.clear(&released);
    if (now_usable) usable_.store(true, std::memory_order_release);
}

void Coherence::disable_without_store() noexcept {
    usable_.store(false, std::memory_order_release);
    for (auto& n : seq_) n.fetch_add(1, std::memory_order_acq_rel);
}

void Coherence::bury(Released& handles) {
    if (handles.empty()) return;
    std::lock_guard<std::mutex> lock(graveyard_mu_);
    graveyard_.insert(graveyard_.end(), handles.begin(), handles.end());
    handles.clear();
    buried_.store(true, std::memory_order_release);
}

Released Coherence::exhume() {
    Released out;
    std::lock_guard<std::mutex> lock(graveyard_mu_);
    out.swap(graveyard_);
    buried_.store(false, std::memory_order_release);
    return out;
}

void Coherence::reinit_after_fork() noexcept {
    // The mutex may be locked by a thread that does not exist in the child: a fresh one.
    new (&graveyard_mu_) std::mutex();
    for (auto& s : stripes_) new (&s.mu) std::mutex();
}

CoherenceStats Coherence::stats() const noexcept {
    CoherenceStats s;
    s.invalidated = invalidated_.load(std::memory_order_relaxed);
    s.resets = resets_.load(std::memory_order_relaxed);
    s.fills = fills_.load(std::memory_order_relaxed);
    s.refused = refused_.load(std::memory_order_relaxed);
    return s;
}

}  // namespace fastcache
