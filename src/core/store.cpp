// The L1 store: per shard, a hash index over heap nodes and a SIEVE queue through them;
// across shards, atomic entry and byte totals that the bounds are checked against.
#include "core/store.hpp"

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace fastcache {
namespace {

// A node's `state` word: pins (in-flight get() calls that copied the value and have not yet
// retained it) in steps of kPin, plus kDetached once the node has left the index. Whoever
// turns it into exactly kDetached (the remover if no pins, else the last reader) frees the
// node and releases its handle. This is what lets get() retain outside the shard lock
// without racing a concurrent replace/erase that would release the same handle first.
constexpr std::uint32_t kDetached = 1;
constexpr std::uint32_t kPin = 2;

// The index key: a view into the node's own key plus its hash, so a lookup by
// string_view neither allocates nor hashes twice. `text` is mutable so a replacement node
// can take over an index slot without rehashing (equality and hash do not change).
struct KeyRef {
    mutable std::string_view text;
    std::size_t hash;
};
struct KeyHash {
    std::size_t operator()(const KeyRef& k) const noexcept { return k.hash; }
};
struct KeyEq {
    bool operator()(const KeyRef& a, const KeyRef& b) const noexcept {
        return a.hash == b.hash && a.text == b.text;
    }
};

struct Node {
    Node(std::string_view k, std::size_t h, Value v, double e, std::size_t c)
        : key(k), hash(h), value(v), expires_at(e), charge(c) {}

    bool expired(double now) const noexcept { return now >= expires_at; }
    KeyRef ref() const noexcept { return {key, hash}; }

    std::string key;
    std::size_t hash;
    Value value;
    double expires_at;
    std::size_t charge;
    Node* older = nullptr;  // towards the tail (oldest)
    Node* newer = nullptr;  // towards the head (newest); the retired-list link once removed
    std::atomic<std::uint32_t> state{0};
    bool visited = false;
};

// The bookkeeping charge is a documented constant, not sizeof arithmetic, so that charges
// are the same on every build; this keeps it honest.
static_assert(sizeof(Node) + 64 <= kEntryOverhead, "kEntryOverhead undercounts an entry");

// A counter written only under its shard's lock and read by stats() without it: a plain
// load and store is enough, and cheaper than a locked read-modify-write.
struct Counter {
    std::atomic<std::uint64_t> v{0};
    void bump(std::uint64_t n = 1) noexcept {
        v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void drop(std::uint64_t n) noexcept {
        v.store(v.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
    }
    std::uint64_t get() const noexcept { return v.load(std::memory_order_relaxed); }
};

using Index = std::unordered_map<KeyRef, Node*, KeyHash, KeyEq>;

struct alignas(64) Shard {
    std::mutex mu;
    Index index;
    Node* head = nullptr;  // newest
    Node* tail = nullptr;  // oldest
    Node* hand = nullptr;  // next SIEVE candidate; null: start again at the tail
    Counter count, bytes;  // this shard's share, read lock-free to pick cull victims
    Counter hits, misses, sets, deletes, evictions, expirations;
};

// A handle given up: released now, or handed to the caller's sink to release later. A
// push that cannot allocate releases at once (the sink's owner chose deferral for safety,
// but running out of memory leaves no better choice than terminate or this).
void release_or_defer(const HandleOps& ops, Released* sink, void* h) noexcept {
    if (sink != nullptr) {
        try {
            sink->push_back(h);
            return;
        } catch (...) {
        }
    }
    ops.release(h);
}

// Nodes and handles to give up once the shard lock is dropped. Declared before the lock
// in each scope, so its destructor runs after the lock's. Linking through the nodes
// themselves means collecting never allocates, so it cannot fail half way.
class Retired {
public:
    explicit Retired(const HandleOps& ops, Released* sink = nullptr) noexcept
        : ops_(ops), sink_(sink) {}
    Retired(const Retired&) = delete;
    Retired& operator=(const Retired&) = delete;
    ~Retired() {
        for (int i = 0; i < handles_; ++i) give_up(handle_[i]);
        while (nodes_ != nullptr) {
            Node* n = nodes_;
            nodes_ = n->newer;
            if (n->value.handle != nullptr) give_up(n->value.handle);
            delete n;
        }
    }
    void node(Node* n) noexcept {
        n->newer = nodes_;
        nodes_ = n;
    }
    void handle(void* h) noexcept {
        if (h != nullptr) handle_[handles_++] = h;  // at most one per call, see callers
    }

private:
    void give_up(void* h) noexcept { release_or_defer(ops_, sink_, h); }

    const HandleOps& ops_;
    Released* sink_;
    Node* nodes_ = nullptr;
    void* handle_[2] = {nullptr, nullptr};
    int handles_ = 0;
};

// The reference set()/add() take on the caller's value, given back unless it was stored.
class OwnedRef {
public:
    OwnedRef(const HandleOps& ops, void* h, Released* sink) noexcept
        : ops_(ops), sink_(sink), h_(h) {
        if (h_ != nullptr) ops_.retain(h_);
    }
    OwnedRef(const OwnedRef&) = delete;
    OwnedRef& operator=(const OwnedRef&) = delete;
    ~OwnedRef() {
        if (h_ != nullptr) release_or_defer(ops_, sink_, h_);
    }
    void stored() noexcept { h_ = nullptr; }

private:
    const HandleOps& ops_;
    Released* sink_;
    void* h_;
};

enum class Metric { entries, bytes };

}  // namespace

struct Store::Impl {
    Impl(StoreConfig c, HandleOps o) : config(c), ops(o) {
        std::size_t n = 1;
        while (n < config.shards && n < (1u << 16)) n <<= 1;
        config.shards = static_cast<unsigned>(n);
        mask = n - 1;
        shards.reset(new Shard[n]);
    }

    ~Impl() { clear_all(0.0, false, nullptr); }

    KeyRef ref(std::string_view key) const noexcept {
        return {key, std::hash<std::string_view>{}(key)};
    }

    // High bits of a multiplicative remix, so shard choice and the index's bucket choice
    // (hash modulo a prime) do not correlate.
    std::size_t shard_index(std::size_t hash) const noexcept {
        return static_cast<std::size_t>(
                   (static_cast<std::uint64_t>(hash) * 0x9E3779B97F4A7C15ull) >> 40) &
               mask;
    }

    // --- queue and accounting; all under the shard's lock --------------------------------

    static void push_head(Shard& s, Node* n) noexcept {
        n->older = s.head;
        n->newer = nullptr;
        if (s.head != nullptr) s.head->newer = n;
        s.head = n;
        if (s.tail == nullptr) s.tail = n;
    }

    static void unlink(Shard& s, Node* n) noexcept {
        if (s.hand == n) s.hand = n->newer;
        if (n->older != nullptr)
            n->older->newer = n->newer;
        else
            s.tail = n->newer;
        if (n->newer != nullptr)
            n->newer->older = n->older;
        else
            s.head = n->older;
        n->older = n->newer = nullptr;
    }

    void charge_added(Shard& s, std::size_t c) noexcept {
        s.bytes.bump(c);
        bytes.fetch_add(c, std::memory_order_relaxed);
    }
    void charge_removed(Shard& s, std::size_t c) noexcept {
        s.bytes.drop(c);
        bytes.fetch_sub(c, std::memory_order_relaxed);
    }

    // The node leaves queue and index; it is freed now (via `r`) or by its last reader.
    // The live node under `k`, or null. An expired node met here is reclaimed (counted as
    // an expiration), as every lookup does.
    Node* find_live(Shard& s, const KeyRef& k, double now, Retired& r) {
        auto it = s.index.find(k);
        if (it == s.index.end()) return nullptr;
        Node* n = it->second;
        if (n->expired(now)) {
            s.expirations.bump();
            remove(s, n, r);
            return nullptr;
        }
        return n;
    }

    void remove(Shard& s, Node* n, Retired& r) noexcept {
        unlink(s, n);
        s.index.erase(n->ref());
        s.count.drop(1);
        entries.fetch_sub(1, std::memory_order_relaxed);
        charge_removed(s, n->charge);
        if (n->state.fetch_or(kDetached, std::memory_order_acq_rel) == 0) r.node(n);
    }

    Node* insert(Shard& s, const KeyRef& k, const Value& v, double expires_at, std::size_t charge) {
        auto node = std::make_unique<Node>(k.text, k.hash, v, expires_at, charge);
        s.index.emplace(node->ref(), node.get());  // strong guarantee on bad_alloc
        Node* n = node.release();
        push_head(s, n);
        s.count.bump(1);
        entries.fetch_add(1, std::memory_order_relaxed);
        charge_added(s, charge);
        return n;
    }

    // Gives the entry at `it` a new value (whose reference the store now owns), returning
    // the node that holds it. The old handle goes to `r`. If a get() is between copying
    // the old value and retaining it, the old node must keep that value until the reader
    // is done, so a fresh node (`fresh`, or allocated here, the only step that can throw)
    // takes the old one's place in queue and index instead.
    Node* replace(Shard& s, Index::iterator it, const Value& v, std::size_t charge, Retired& r,
                  std::unique_ptr<Node> fresh = nullptr) {
        Node* n = it->second;
        const std::size_t old_charge = n->charge;
        if (n->state.load(std::memory_order_acquire) == 0) {
            r.handle(n->value.handle);
            n->value = v;
            n->charge = charge;
        } else {
            if (!fresh) fresh = std::make_unique<Node>(n->key, n->hash, v, n->expires_at, charge);
            fresh->value = v;
            fresh->charge = charge;
            fresh->expires_at = n->expires_at;
            fresh->visited = n->visited;
            Node* f = fresh.release();
            f->older = n->older;
            f->newer = n->newer;
            if (f->older != nullptr)
                f->older->newer = f;
            else
                s.tail = f;
            if (f->newer != nullptr)
                f->newer->older = f;
            else
                s.head = f;
            if (s.hand == n) s.hand = f;
            it->first.text = f->key;
            it->second = f;
            n->older = n->newer = nullptr;
            if (n->state.fetch_or(kDetached, std::memory_order_acq_rel) == 0) r.node(n);
            n = f;
        }
        charge_removed(s, old_charge);
        charge_added(s, charge);
        return n;
    }

    // SIEVE: from the hand towards the head (wrapping to the tail), clear visited bits
    // until an unvisited or expired entry turns up. Two laps are enough: the first clears
    // every bit. `keep` (the entry being written) is stepped over untouched.
    static Node* pick_victim(Shard& s, double now, const Node* keep) noexcept {
        std::size_t budget = 2 * s.index.size() + 1;
        Node* n = s.hand != nullptr ? s.hand : s.tail;
        while (n != nullptr && budget-- > 0) {
            if (n != keep) {
                if (n->expired(now) || !n->visited) {
                    s.hand = n;
                    return n;
                }
                n->visited = false;
            }
            n = n->newer != nullptr ? n->newer : s.tail;
        }
        return nullptr;
    }

    bool evict_from(Shard& s, double now, const Node* keep, Released* sink) {
        Retired r(ops, sink);
        std::lock_guard<std::mutex> lock(s.mu);
        Node* victim = pick_victim(s, now, keep);
        if (victim == nullptr) return false;
        if (victim->expired(now))
            s.expirations.bump();
        else
            s.evictions.bump();
        remove(s, victim, r);
        return true;
    }

    // The first shard from `start` holding at least its share (by `m`), so that victims
    // come from where the entries are and shards stay balanced; else the fullest one.
    std::size_t choose_shard(std::size_t start, Metric m) const noexcept {
        const std::size_t n = mask + 1;
        const std::size_t total = m == Metric::entries ? entries.load(std::memory_order_relaxed)
                                                       : bytes.load(std::memory_order_relaxed);
        const std::size_t share = total / n;
        std::size_t best = start & mask, best_size = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t idx = (start + i) & mask;
            const Shard& s = shards[idx];
            const std::size_t size = m == Metric::entries ? s.count.get() : s.bytes.get();
            if (size >= share && size > 0) return idx;
            if (size > best_size) {
                best = idx;
                best_size = size;
            }
        }
        return best;
    }

    // Evicts one entry, locking one shard at a time; false if there was nothing to evict.
    bool evict_one(std::size_t start, double now, const Node* keep, Metric m, Released* sink) {
        const std::size_t first = choose_shard(start, m);
        if (evict_from(shards[first], now, keep, sink)) return true;
        for (std::size_t i = 0; i <= mask; ++i) {
            const std::size_t idx = (start + i) & mask;
            if (idx != first && evict_from(shards[idx], now, keep, sink)) return true;
        }
        return false;
    }

    // Django's _cull: count/cull_frequency victims, or everything when it is 0.
    void cull(double now, Released* sink) {
        if (config.cull_frequency == 0) {
            clear_all(now, true, sink);
            return;
        }
        const std::size_t victims = entries.load(std::memory_order_relaxed) / config.cull_frequency;
        for (std::size_t i = 0; i < victims; ++i) {
            const std::size_t start = cursor.fetch_add(1, std::memory_order_relaxed);
            if (!evict_one(start, now, nullptr, Metric::entries, sink)) break;
        }
    }

    // Evicts until the byte total fits, the writer's own shard first. Stops when a full
    // pass finds nothing to evict but `keep` (possible only while others are writing).
    void shrink(std::size_t own, const Node* keep, double now, Released* sink) {
        std::size_t start = own;
        while (bytes.load(std::memory_order_relaxed) > config.max_bytes) {
            if (!evict_one(start, now, keep, Metric::bytes, sink)) break;
            start = cursor.fetch_add(1, std::memory_order_relaxed);
        }
    }

    void clear_all(double now, bool count_removals, Released* sink) {
        for (std::size_t i = 0; i <= mask; ++i) {
            Shard& s = shards[i];
            Retired r(ops, sink);
            std::lock_guard<std::mutex> lock(s.mu);
            while (s.tail != nullptr) {
                Node* n = s.tail;
                if (count_removals) {
                    if (n->expired(now))
                        s.expirations.bump();
                    else
                        s.evictions.bump();
                }
                remove(s, n, r);
            }
        }
    }

    // set() and add(): see the header for the contract.
    bool store(std::string_view key, const Value& value, double expires_at, double now,
               bool add_only, Released* sink) {
        const KeyRef k = ref(key);
        const std::size_t si = shard_index(k.hash);
        Shard& s = shards[si];
        const std::size_t charge = entry_charge(key, value);

        if (charge > config.max_bytes) {
            Retired r(ops, sink);
            std::lock_guard<std::mutex> lock(s.mu);
            auto it = s.index.find(k);
            if (it != s.index.end()) {
                Node* n = it->second;
                if (n->expired(now)) {
                    s.expirations.bump();
                    remove(s, n, r);
                } else if (!add_only) {
                    s.evictions.bump();
                    remove(s, n, r);
                }
            }
            return false;
        }

        OwnedRef own(ops, value.handle, sink);
        Node* placed = nullptr;
        bool culled = false;
        for (;;) {
            Retired r(ops, sink);
            std::unique_lock<std::mutex> lock(s.mu);
            auto it = s.index.find(k);
            if (it != s.index.end()) {
                const bool was_expired = it->second->expired(now);
                if (add_only && !was_expired) return false;
                placed = replace(s, it, value, charge, r);
                own.stored();
                placed->expires_at = expires_at;
                if (was_expired) {
                    // A new entry in all but memory: it joins the queue at the head.
                    s.expirations.bump();
                    unlink(s, placed);
                    push_head(s, placed);
                    placed->visited = false;
                } else {
                    placed->visited = true;
                }
                s.sets.bump();
                break;
            }
            if (!culled && entries.load(std::memory_order_relaxed) >= config.max_entries) {
                lock.unlock();
                cull(now, sink);
                culled = true;
                continue;
            }
            placed = insert(s, k, value, expires_at, charge);
            own.stored();
            s.sets.bump();
            break;
        }
        // `placed` is only compared, never read: it may be gone already.
        if (bytes.load(std::memory_order_relaxed) > config.max_bytes) shrink(si, placed, now, sink);
        return true;
    }

    StoreConfig config;
    HandleOps ops;
    std::unique_ptr<Shard[]> shards;
    std::size_t mask = 0;
    std::atomic<std::size_t> entries{0}, bytes{0};
    std::atomic<std::size_t> cursor{0};  // round-robin start for cull and byte eviction
};

Store::Store(StoreConfig config, HandleOps ops) : impl_(std::make_unique<Impl>(config, ops)) {}

Store::~Store() = default;

std::optional<Value> Store::get(std::string_view key, double now) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    Shard& s = m.shards[m.shard_index(k.hash)];
    Value v;
    Node* pinned = nullptr;
    {
        Retired r(m.ops);
        std::lock_guard<std::mutex> lock(s.mu);
        Node* n = m.find_live(s, k, now, r);
        if (!n) {
            s.misses.bump();
            return std::nullopt;
        }
        s.hits.bump();
        n->visited = true;
        v = n->value;
        if (v.handle == nullptr) return v;
        n->state.fetch_add(kPin, std::memory_order_relaxed);
        pinned = n;
    }
    m.ops.retain(v.handle);
    if (pinned->state.fetch_sub(kPin, std::memory_order_acq_rel) == (kPin | kDetached)) {
        // Removed or replaced while pinned: this reader is the last one out.
        m.ops.release(pinned->value.handle);
        delete pinned;
    }
    return v;
}

bool Store::contains(std::string_view key, double now) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    Shard& s = m.shards[m.shard_index(k.hash)];
    Retired r(m.ops);
    std::lock_guard<std::mutex> lock(s.mu);
    return m.find_live(s, k, now, r) != nullptr;
}

bool Store::set(std::string_view key, Value value, double expires_at, double now,
                Released* released) {
    return impl_->store(key, value, expires_at, now, false, released);
}

bool Store::add(std::string_view key, Value value, double expires_at, double now) {
    return impl_->store(key, value, expires_at, now, true, nullptr);
}

bool Store::update(std::string_view key, double now,
                   const std::function<Value(const Value&)>& update) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    const std::size_t si = m.shard_index(k.hash);
    Shard& s = m.shards[si];
    Node* placed;
    {
        Retired r(m.ops);
        std::lock_guard<std::mutex> lock(s.mu);
        auto it = s.index.find(k);
        if (it == s.index.end()) return false;
        Node* n = it->second;
        if (n->expired(now)) {
            s.expirations.bump();
            m.remove(s, n, r);
            return false;
        }
        // Allocated before the callback, so nothing can fail once it has handed over a
        // reference. Pins only drop while the lock is held, so the need cannot appear later.
        std::unique_ptr<Node> fresh;
        if (n->state.load(std::memory_order_acquire) != 0) {
            fresh = std::make_unique<Node>(n->key, n->hash, Value{}, n->expires_at, 0);
        }
        const Value v = update(n->value);
        const std::size_t charge = entry_charge(key, v);
        if (charge > m.config.max_bytes) {
            s.evictions.bump();
            r.handle(v.handle);
            m.remove(s, n, r);
            return true;
        }
        placed = m.replace(s, it, v, charge, r, std::move(fresh));
    }
    if (m.bytes.load(std::memory_order_relaxed) > m.config.max_bytes)
        m.shrink(si, placed, now, nullptr);
    return true;
}

bool Store::erase(std::string_view key, double now, Released* released) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    Shard& s = m.shards[m.shard_index(k.hash)];
    Retired r(m.ops, released);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.index.find(k);
    if (it == s.index.end()) return false;
    Node* n = it->second;
    const bool live = !n->expired(now);
    if (live)
        s.deletes.bump();
    else
        s.expirations.bump();
    m.remove(s, n, r);
    return live;
}

bool Store::touch(std::string_view key, double expires_at, double now) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    Shard& s = m.shards[m.shard_index(k.hash)];
    Retired r(m.ops);
    std::lock_guard<std::mutex> lock(s.mu);
    Node* n = m.find_live(s, k, now, r);
    if (!n) return false;
    n->expires_at = expires_at;
    return true;
}

std::optional<double> Store::expiry(std::string_view key, double now) {
    Impl& m = *impl_;
    const KeyRef k = m.ref(key);
    Shard& s = m.shards[m.shard_index(k.hash)];
    Retired r(m.ops);
    std::lock_guard<std::mutex> lock(s.mu);
    Node* n = m.find_live(s, k, now, r);
    if (!n) return std::nullopt;
    return n->expires_at;
}

std::vector<std::string> Store::keys(double now) {
    Impl& m = *impl_;
    std::vector<std::string> out;
    out.reserve(m.entries.load(std::memory_order_relaxed));
    for (std::size_t i = 0; i <= m.mask; ++i) {
        Shard& s = m.shards[i];
        Retired r(m.ops);
        std::lock_guard<std::mutex> lock(s.mu);
        for (Node* n = s.tail; n != nullptr;) {
            Node* next = n->newer;
            if (n->expired(now)) {
                s.expirations.bump();
                m.remove(s, n, r);
            } else {
                out.push_back(n->key);
            }
            n = next;
        }
    }
    return out;
}

std::size_t Store::erase_if(double now, const std::function<bool(std::string_view)>& pred) {
    Impl& m = *impl_;
    std::size_t erased = 0;
    for (std::size_t i = 0; i <= m.mask; ++i) {
        Shard& s = m.shards[i];
        Retired r(m.ops);
        std::lock_guard<std::mutex> lock(s.mu);
        for (Node* n = s.tail; n != nullptr;) {
            Node* next = n->newer;
            if (n->expired(now)) {
                s.expirations.bump();
                m.remove(s, n, r);
            } else if (pred(n->key)) {
                s.deletes.bump();
                m.remove(s, n, r);
                ++erased;
            }
            n = next;
        }
    }
    return erased;
}

void Store::clear(Released* released) { impl_->clear_all(0.0, false, released); }

StoreStats Store::stats() const {
    const Impl& m = *impl_;
    StoreStats st;
    for (std::size_t i = 0; i <= m.mask; ++i) {
        const Shard& s = m.shards[i];
        st.hits += s.hits.get();
        st.misses += s.misses.get();
        st.sets += s.sets.get();
        st.deletes += s.deletes.get();
        st.evictions += s.evictions.get();
        st.expirations += s.expirations.get();
    }
    st.entries = m.entries.load(std::memory_order_relaxed);
    st.bytes = m.bytes.load(std::memory_order_relaxed);
    return st;
}

const StoreConfig& Store::config() const { return impl_->config; }

std::string Store::check_invariants() const {
    const Impl& m = *impl_;
    std::size_t total_entries = 0, total_bytes = 0;
    for (std::size_t i = 0; i <= m.mask; ++i) {
        Shard& s = m.shards[i];
        std::lock_guard<std::mutex> lock(s.mu);
        const std::string where = "shard " + std::to_string(i) + ": ";
        std::size_t count = 0, bytes = 0;
        bool hand_seen = s.hand == nullptr;
        const Node* prev = nullptr;
        for (const Node* n = s.tail; n != nullptr; prev = n, n = n->newer) {
            if (n->older != prev) return where + "broken queue links at " + n->key;
            if (n == s.hand) hand_seen = true;
            if (n->state.load() != 0) return where + "queued node pinned or detached: " + n->key;
            auto it = s.index.find(n->ref());
            if (it == s.index.end() || it->second != n) return where + "not indexed: " + n->key;
            if (it->first.text.data() != n->key.data()) return where + "index key not the node's";
            if (n->charge != n->value.charge + n->key.size() + kEntryOverhead)
                return where + "wrong charge for " + n->key;
            ++count;
            bytes += n->charge;
        }
        if (prev != s.head) return where + "head is not the newest node";
        if (!hand_seen) return where + "hand points outside the queue";
        if (count != s.index.size()) return where + "queue and index sizes differ";
        if (count != s.count.get()) return where + "entry count differs from a recount";
        if (bytes != s.bytes.get()) return where + "byte count differs from a recount";
        total_entries += count;
        total_bytes += bytes;
    }
    if (total_entries != m.entries.load()) return "global entry count differs from a recount";
    if (total_bytes != m.bytes.load()) return "global byte count differs from a recount";
    return {};
}

// --- glob ------------------------------------------------------------------------------

namespace {

// Whether the single-character token at pattern[p] (a literal, `?`, `\x` or a `[...]`
// class) matches `c`; sets `next` to the index after the token.
bool token_matches(std::string_view pat, std::size_t p, unsigned char c,
                   std::size_t& next) noexcept {
    const std::size_t len = pat.size();
    switch (pat[p]) {
        case '?':
            next = p + 1;
            return true;
        case '\\':
            if (p + 1 < len) {
                next = p + 2;
                return static_cast<unsigned char>(pat[p + 1]) == c;
            }
            next = p + 1;  // a trailing backslash is itself
            return c == '\\';
        case '[': {
            std::size_t i = p + 1;
            const bool negate = i < len && (pat[i] == '^' || pat[i] == '!');
            if (negate) ++i;
            bool hit = false;
            while (i < len && pat[i] != ']') {
                if (pat[i] == '\\' && i + 1 < len) {
                    hit |= static_cast<unsigned char>(pat[i + 1]) == c;
                    i += 2;
                } else if (i + 2 < len && pat[i + 1] == '-') {
                    unsigned char lo = static_cast<unsigned char>(pat[i]);
                    unsigned char hi = static_cast<unsigned char>(pat[i + 2]);
                    if (lo > hi) std::swap(lo, hi);
                    hit |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    hit |= static_cast<unsigned char>(pat[i]) == c;
                    ++i;
                }
            }
            next = i < len ? i + 1 : len;  // an unclosed class ends with the pattern
            return hit != negate;
        }
        default:
            next = p + 1;
            return static_cast<unsigned char>(pat[p]) == c;
    }
}

}  // namespace

// Backtracking to the last `*` only: every other token consumes exactly one character, so
// a later star can always absorb what an earlier one would have, and retrying the most
// recent star with one more character is enough (no exponential blow-up).
bool glob_match(std::string_view pattern, std::string_view text) noexcept {
    constexpr std::size_t kNone = static_cast<std::size_t>(-1);
    std::size_t p = 0, t = 0, star_p = kNone, star_t = 0;
    while (t < text.size()) {
        if (p < pattern.size() && pattern[p] == '*') {
            while (p < pattern.size() && pattern[p] == '*') ++p;
            if (p == pattern.size()) return true;
            star_p = p;
            star_t = t;
            continue;
        }
        std::size_t next;
        if (p < pattern.size() &&
            token_matches(pattern, p, static_cast<unsigned char>(text[t]), next)) {
            p = next;
            ++t;
            continue;
        }
        if (star_p == kNone) return false;
        p = star_p;
        t = ++star_t;
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

}  // namespace fastcache
