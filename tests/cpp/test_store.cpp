// Tests for the L1 store (src/core/store.hpp): semantics, bounds, reference balance,
// concurrency and SIEVE's hit ratio against LRU. Prints "N passed, N failed" last.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <list>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "check.hpp"
#include "core/store.hpp"

using namespace fastcache;

// --- counted handles: every retain must be matched by exactly one release ------------------

// An object starts with one reference, its creator's. Retaining a dead object (count 0) is
// a use after free; releasing one is a double release. Objects are never freed, so both
// are detected instead of crashing.
struct Obj {
    explicit Obj(std::size_t c = 0) : charge(c) {}
    std::atomic<int> refs{1};
    std::size_t charge;
};

static std::atomic<long> g_bad_retains{0};
static std::atomic<long> g_bad_releases{0};
static std::atomic<long> g_retains{0};
static std::atomic<long> g_releases{0};

// Optional re-entry: when set, retain and release call into this store, which deadlocks
// if either runs under a shard lock.
static Store* g_reenter = nullptr;

static void obj_retain(void* h) noexcept {
    g_retains.fetch_add(1, std::memory_order_relaxed);
    if (static_cast<Obj*>(h)->refs.fetch_add(1) <= 0) g_bad_retains.fetch_add(1);
    if (g_reenter != nullptr) g_reenter->contains("reentry", 0.0);
}

static void obj_release(void* h) noexcept {
    g_releases.fetch_add(1, std::memory_order_relaxed);
    if (static_cast<Obj*>(h)->refs.fetch_sub(1) <= 0) g_bad_releases.fetch_add(1);
    if (g_reenter != nullptr) g_reenter->contains("reentry", 0.0);
}

static const HandleOps kOps{obj_retain, obj_release};

// Owns the test's objects; `value` hands one to the store and drops the creator's reference
// right after the call, so that afterwards only the store's references remain.
struct Objs {
    std::deque<Obj> all;
    Obj* make(std::size_t charge = 0) { return &all.emplace_back(charge); }
    static Value value_of(Obj* o) { return Value{o, 0, o->charge}; }
    static void drop(Obj* o) { obj_release(o); }
    long live_refs() const {
        long n = 0;
        for (const Obj& o : all) n += o.refs.load();
        return n;
    }
};

static bool set_obj(Store& s, Objs& objs, std::string_view key, std::size_t charge,
                    double expires_at, double now, Obj** made = nullptr) {
    Obj* o = objs.make(charge);
    const bool ok = s.set(key, Objs::value_of(o), expires_at, now);
    Objs::drop(o);
    if (made != nullptr) *made = o;
    return ok;
}

static bool add_obj(Store& s, Objs& objs, std::string_view key, double expires_at, double now,
                    Obj** made = nullptr) {
    Obj* o = objs.make();
    const bool ok = s.add(key, Objs::value_of(o), expires_at, now);
    Objs::drop(o);
    if (made != nullptr) *made = o;
    return ok;
}

// Reads the value under `key` and drops the reference get() gave the caller.
static Obj* get_obj(Store& s, std::string_view key, double now) {
    auto v = s.get(key, now);
    if (!v) return nullptr;
    auto* o = static_cast<Obj*>(v->handle);
    obj_release(o);
    return o;
}

static StoreConfig small_config(std::size_t max_entries = 1000, unsigned cull = 3,
                                unsigned shards = 4, std::size_t max_bytes = 1u << 30) {
    StoreConfig c;
    c.max_entries = max_entries;
    c.cull_frequency = cull;
    c.shards = shards;
    c.max_bytes = max_bytes;
    return c;
}

// --- semantics -------------------------------------------------------------------------------

static void test_ttl_and_get() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        Obj* a = nullptr;
        CHECK(set_obj(s, objs, "a", 5, 10.0, 0.0, &a));
        CHECK(set_obj(s, objs, "forever", 5, kNever, 0.0));
        CHECK_EQ(a->refs.load(), 1);  // the store's own reference only
        CHECK(get_obj(s, "a", 9.999) == a);
        CHECK(s.contains("a", 9.999));
        CHECK(get_obj(s, "a", 10.0) == nullptr);  // expired at now == expires_at
        CHECK_EQ(a->refs.load(), 0);              // reclaimed on the way
        CHECK(!s.contains("a", 5.0));             // gone, not resurrected by an older now
        CHECK(get_obj(s, "forever", 1e300) != nullptr);
        CHECK(s.contains("forever", std::numeric_limits<double>::max()));
        CHECK(get_obj(s, "missing", 0.0) == nullptr);
        const StoreStats st = s.stats();
        CHECK_EQ(st.hits, 2u);
        CHECK_EQ(st.misses, 2u);
        CHECK_EQ(st.expirations, 1u);
        CHECK_EQ(st.sets, 2u);
        CHECK_EQ(st.entries, 1u);
        CHECK_EQ(st.bytes, entry_charge("forever", Value{nullptr, 0, 5}));
        CHECK_EQ(s.check_invariants(), std::string());
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_get_retains_for_caller() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        Obj* a = nullptr;
        set_obj(s, objs, "a", 0, kNever, 0.0, &a);
        auto v = s.get("a", 0.0);
        CHECK(v && v->handle == a);
        CHECK_EQ(a->refs.load(), 2);  // store + caller
        CHECK(s.erase("a", 0.0));
        CHECK_EQ(a->refs.load(), 1);  // the caller's survives the erase
        obj_release(a);
        CHECK_EQ(a->refs.load(), 0);
        // Null handles are plain values: stored and returned, never retained or released.
        const long before = g_retains.load() + g_releases.load();
        CHECK(s.set("null", Value{nullptr, 7, 3}, kNever, 0.0));
        auto n = s.get("null", 0.0);
        CHECK(n && n->handle == nullptr && n->tag == 7u && n->charge == 3u);
        CHECK(s.erase("null", 0.0));
        CHECK_EQ(g_retains.load() + g_releases.load(), before);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_replace_and_add() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        Obj *a1 = nullptr, *a2 = nullptr, *b = nullptr, *b2 = nullptr;
        set_obj(s, objs, "a", 10, kNever, 0.0, &a1);
        set_obj(s, objs, "a", 20, kNever, 0.0, &a2);
        CHECK_EQ(a1->refs.load(), 0);  // replaced value released
        CHECK_EQ(a2->refs.load(), 1);
        CHECK_EQ(s.stats().entries, 1u);
        CHECK_EQ(s.stats().bytes, entry_charge("a", Value{nullptr, 0, 20}));

        CHECK(!add_obj(s, objs, "a", kNever, 0.0, &b));  // live: untouched
        CHECK_EQ(b->refs.load(), 0);                     // not kept
        CHECK(get_obj(s, "a", 0.0) == a2);

        CHECK(add_obj(s, objs, "b", 5.0, 0.0, &b));
        CHECK_EQ(b->refs.load(), 1);
        CHECK(add_obj(s, objs, "b", kNever, 5.0, &b2));  // expired: add replaces it
        CHECK_EQ(b->refs.load(), 0);
        CHECK(get_obj(s, "b", 100.0) == b2);
        CHECK_EQ(s.expiry("b", 100.0).value_or(-1), kNever);
        const StoreStats st = s.stats();
        CHECK_EQ(st.sets, 4u);
        CHECK_EQ(st.expirations, 1u);
        CHECK_EQ(st.entries, 2u);
        CHECK_EQ(s.check_invariants(), std::string());
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_touch_expiry_erase() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        set_obj(s, objs, "a", 0, 10.0, 0.0);
        CHECK_EQ(s.expiry("a", 0.0).value_or(-1), 10.0);
        CHECK(s.touch("a", 50.0, 5.0));
        CHECK_EQ(s.expiry("a", 20.0).value_or(-1), 50.0);
        CHECK(s.touch("a", kNever, 20.0));
        CHECK_EQ(s.expiry("a", 1e18).value_or(-1), kNever);
        CHECK(!s.touch("missing", 1.0, 0.0));
        CHECK(!s.expiry("missing", 0.0).has_value());

        set_obj(s, objs, "b", 0, 1.0, 0.0);
        CHECK(!s.touch("b", kNever, 1.0));  // expired: not revived
        CHECK(!s.expiry("b", 0.0).has_value());
        set_obj(s, objs, "c", 0, 1.0, 0.0);
        CHECK(!s.expiry("c", 2.0).has_value());

        set_obj(s, objs, "d", 0, 1.0, 0.0);
        CHECK(!s.erase("d", 1.0));  // expired: removed but reported as absent
        CHECK(!s.erase("d", 0.0));
        CHECK(s.erase("a", 0.0));
        CHECK(!s.erase("a", 0.0));
        const StoreStats st = s.stats();
        CHECK_EQ(st.deletes, 1u);
        CHECK_EQ(st.expirations, 3u);
        CHECK_EQ(st.entries, 0u);
        CHECK_EQ(st.bytes, 0u);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_keys_and_erase_if() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        for (int i = 0; i < 20; ++i) {
            set_obj(s, objs, "user:" + std::to_string(i), 0, i < 5 ? 1.0 : kNever, 0.0);
        }
        set_obj(s, objs, "session:1", 0, kNever, 0.0);
        auto ks = s.keys(2.0);
        CHECK_EQ(ks.size(), 16u);
        std::set<std::string> uniq(ks.begin(), ks.end());
        CHECK_EQ(uniq.size(), 16u);
        CHECK(uniq.count("session:1") == 1 && uniq.count("user:4") == 0 &&
              uniq.count("user:5") == 1);
        CHECK_EQ(s.stats().expirations, 5u);
        CHECK_EQ(s.stats().entries, 16u);

        const std::size_t n =
            s.erase_if(2.0, [](std::string_view k) { return glob_match("user:1[0-9]", k); });
        CHECK_EQ(n, 10u);
        CHECK_EQ(s.stats().deletes, 10u);
        CHECK_EQ(s.keys(2.0).size(), 6u);
        CHECK_EQ(s.check_invariants(), std::string());
        s.clear();
        CHECK_EQ(s.stats().entries, 0u);
        CHECK_EQ(s.stats().bytes, 0u);
        CHECK_EQ(s.stats().deletes, 10u);  // clear() is not counted
        CHECK(s.keys(0.0).empty());
        CHECK_EQ(objs.live_refs(), 0L);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_config_rounding() {
    Store a(small_config(1000, 3, 5), kOps);
    CHECK_EQ(a.config().shards, 8u);
    Store b(small_config(1000, 3, 0), kOps);
    CHECK_EQ(b.config().shards, 1u);
    Store c(small_config(1000, 3, 16), kOps);
    CHECK_EQ(c.config().shards, 16u);
}

// --- bounds ----------------------------------------------------------------------------------

// Django's own cull test: MAX_ENTRIES=30, insert keys 1..49, count what is left.
static void test_cull_counts() {
    for (unsigned shards : {1u, 4u, 16u}) {
        Objs objs;
        {
            Store s(small_config(30, 3, shards), kOps);
            for (int i = 1; i < 50; ++i) {
                set_obj(s, objs, "cull" + std::to_string(i), 0, kNever, 0.0);
            }
            CHECK_EQ(s.stats().entries, 29u);
            CHECK_EQ(s.keys(0.0).size(), 29u);
            CHECK_EQ(s.stats().evictions, 20u);
            CHECK(s.contains("cull49", 0.0));  // the key being set survives its own cull
            CHECK_EQ(s.check_invariants(), std::string());
        }
        CHECK_EQ(objs.live_refs(), 0L);
        {
            Store s(small_config(30, 0, shards), kOps);
            for (int i = 1; i < 50; ++i) {
                set_obj(s, objs, "zero" + std::to_string(i), 0, kNever, 0.0);
            }
            CHECK_EQ(s.stats().entries, 19u);
            CHECK_EQ(s.stats().evictions, 30u);
            CHECK_EQ(s.check_invariants(), std::string());
        }
        CHECK_EQ(objs.live_refs(), 0L);
    }
    // Replacing a key at the bound does not cull; expired victims count as expirations.
    Objs objs;
    {
        Store s(small_config(10, 2, 1), kOps);
        for (int i = 0; i < 10; ++i) {
            set_obj(s, objs, "k" + std::to_string(i), 0, i < 3 ? 1.0 : kNever, 0.0);
        }
        set_obj(s, objs, "k5", 0, kNever, 0.0);
        CHECK_EQ(s.stats().entries, 10u);
        set_obj(s, objs, "new", 0, kNever, 2.0);  // culls 10/2 = 5: the 3 oldest are expired
        CHECK_EQ(s.stats().entries, 6u);
        CHECK_EQ(s.stats().expirations, 3u);
        CHECK_EQ(s.stats().evictions, 2u);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

// SIEVE's order on one shard: hits only set a bit, the hand spares visited entries once.
static void test_sieve_order() {
    Objs objs;
    {
        // max_entries 3 with cull_frequency 3: one victim per new key.
        Store s(small_config(3, 3, 1), kOps);
        set_obj(s, objs, "a", 0, kNever, 0.0);
        set_obj(s, objs, "b", 0, kNever, 0.0);
        set_obj(s, objs, "c", 0, kNever, 0.0);
        get_obj(s, "a", 0.0);
        set_obj(s, objs, "d", 0, kNever, 0.0);  // hand: a visited (cleared), b evicted
        CHECK(s.contains("a", 0.0) && !s.contains("b", 0.0) && s.contains("c", 0.0));
        set_obj(s, objs, "e", 0, kNever, 0.0);  // hand resumes at c
        CHECK(s.contains("a", 0.0) && !s.contains("c", 0.0) && s.contains("d", 0.0));
        set_obj(s, objs, "a", 0, kNever, 0.0);  // a replace counts as a visit
        set_obj(s, objs, "f", 0, kNever, 0.0);  // hand resumes at d, unvisited
        CHECK(s.contains("a", 0.0) && !s.contains("d", 0.0) && s.contains("e", 0.0));
        CHECK_EQ(s.stats().evictions, 3u);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

static void test_byte_bound() {
    Objs objs;
    {
        const std::size_t per = entry_charge("b00", Value{nullptr, 0, 100});
        Store s(small_config(1000, 3, 4, 10 * per), kOps);
        for (int i = 0; i < 40; ++i) {
            char key[8];
            std::snprintf(key, sizeof key, "b%02d", i);
            CHECK(set_obj(s, objs, key, 100, kNever, 0.0));
            CHECK(s.stats().bytes <= 10 * per);
            CHECK(s.contains(key, 0.0));  // the new entry is never its own victim
        }
        CHECK_EQ(s.stats().entries, 10u);
        CHECK_EQ(s.stats().bytes, 10 * per);
        CHECK_EQ(s.stats().evictions, 30u);
        // A value needing more room than one victim frees: several go.
        CHECK(set_obj(s, objs, "big", 100 + 3 * per, kNever, 0.0));
        CHECK(s.stats().bytes <= 10 * per);
        CHECK_EQ(s.stats().entries, 7u);  // four of one `per` each made room for 4 * per
        CHECK_EQ(s.check_invariants(), std::string());

        // Oversize: not stored, and the old entry under the key is removed.
        Obj* old = nullptr;
        set_obj(s, objs, "x", 0, kNever, 0.0, &old);
        Obj* huge = nullptr;
        CHECK(!set_obj(s, objs, "x", 10 * per, kNever, 0.0, &huge));
        CHECK_EQ(huge->refs.load(), 0);
        CHECK_EQ(old->refs.load(), 0);
        CHECK(!s.contains("x", 0.0));
        // A charge of exactly max_bytes fits (alone).
        Store t(small_config(1000, 3, 4, per), kOps);
        CHECK(set_obj(t, objs, "b00", 100, kNever, 0.0));
        CHECK(!set_obj(t, objs, "b01", 101, kNever, 0.0));
        CHECK(t.contains("b00", 0.0));
        // add of an oversize value leaves a live entry alone.
        Obj* big = objs.make(per);
        CHECK(!t.add("b00", Objs::value_of(big), kNever, 0.0));
        Objs::drop(big);
        CHECK(t.contains("b00", 0.0));
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

// --- update ----------------------------------------------------------------------------------

static void test_update() {
    Objs objs;
    {
        Store s(small_config(), kOps);
        Obj* a = nullptr;
        set_obj(s, objs, "n", 1, 100.0, 0.0, &a);
        Obj* b = objs.make(2);  // its creator's reference goes to the store
        CHECK(s.update("n", 0.0, [&](const Value& old) {
            CHECK(old.handle == a);
            return Objs::value_of(b);
        }));
        CHECK_EQ(a->refs.load(), 0);
        CHECK_EQ(b->refs.load(), 1);
        CHECK(get_obj(s, "n", 0.0) == b);
        CHECK_EQ(s.expiry("n", 0.0).value_or(-1), 100.0);  // kept
        CHECK_EQ(s.stats().bytes, entry_charge("n", Value{nullptr, 0, 2}));

        bool called = false;
        try {
            s.update("n", 0.0, [&](const Value&) -> Value {
                called = true;
                throw std::runtime_error("no");
            });
            CHECK(false);
        } catch (const std::runtime_error&) {
        }
        CHECK(called);
        CHECK_EQ(b->refs.load(), 1);
        CHECK(get_obj(s, "n", 0.0) == b);
        CHECK_EQ(s.check_invariants(), std::string());

        called = false;
        CHECK(!s.update("missing", 0.0, [&](const Value& v) {
            called = true;
            return v;
        }));
        CHECK(!s.update("n", 100.0, [&](const Value& v) {  // expired
            called = true;
            return v;
        }));
        CHECK(!called);
        CHECK_EQ(b->refs.load(), 0);

        // Too large after the update: the entry goes, both references are released.
        Store t(small_config(1000, 3, 4, 1000), kOps);
        Obj* c = nullptr;
        set_obj(t, objs, "n", 1, kNever, 0.0, &c);
        Obj* d = objs.make(5000);
        CHECK(t.update("n", 0.0, [&](const Value&) { return Objs::value_of(d); }));
        CHECK(!t.contains("n", 0.0));
        CHECK_EQ(c->refs.load(), 0);
        CHECK_EQ(d->refs.load(), 0);
        CHECK_EQ(t.stats().entries, 0u);
        CHECK_EQ(t.stats().bytes, 0u);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

// retain and release call back into the store: a shard lock held around either deadlocks.
static void test_reentrant_handle_ops() {
    Objs objs;
    {
        Store s(small_config(3, 3, 1, 1u << 20), kOps);
        g_reenter = &s;
        for (int i = 0; i < 10; ++i) set_obj(s, objs, "r" + std::to_string(i), 0, 5.0, 0.0);
        get_obj(s, "r9", 0.0);
        get_obj(s, "r9", 6.0);
        set_obj(s, objs, "r8", 0, kNever, 0.0);
        s.update("r8", 0.0, [&](const Value&) { return Objs::value_of(objs.make()); });
        s.erase("r8", 0.0);
        s.erase_if(0.0, [](std::string_view) { return true; });
        set_obj(s, objs, "r1", 0, kNever, 0.0);
        s.clear();
        set_obj(s, objs, "r2", 0, kNever, 0.0);
        g_reenter = nullptr;
        CHECK_EQ(objs.live_refs(), 1L);
    }
    CHECK_EQ(objs.live_refs(), 0L);
}

// --- glob ------------------------------------------------------------------------------------

static void test_glob() {
    struct Case {
        const char* pattern;
        const char* text;
        bool match;
    };
    const Case cases[] = {
        {"", "", true},
        {"", "a", false},
        {"*", "", true},
        {"*", "anything", true},
        {"**", "", true},
        {"a", "a", true},
        {"a", "b", false},
        {"a", "aa", false},
        {"?", "", false},
        {"?", "x", true},
        {"??", "x", false},
        {"h?llo", "hello", true},
        {"h*llo", "hllo", true},
        {"h*llo", "heeeello", true},
        {"h*llo", "hellox", false},
        {"*llo", "hello", true},
        {"he*", "hello", true},
        {"*ll*", "hello", true},
        {"*x*", "hello", false},
        {"h[ae]llo", "hello", true},
        {"h[ae]llo", "hallo", true},
        {"h[ae]llo", "hillo", false},
        {"h[^e]llo", "hallo", true},
        {"h[^e]llo", "hello", false},
        {"h[!e]llo", "hallo", true},
        {"h[!e]llo", "hello", false},
        {"h[a-b]llo", "hbllo", true},
        {"h[a-b]llo", "hcllo", false},
        {"h[b-a]llo", "hallo", true},  // reversed range
        {"[0-9][0-9]", "42", true},
        {"[0-9][0-9]", "4x", false},
        {"[^0-9]", "x", true},
        {"[^0-9]", "5", false},
        {"[a-]", "-", false},  // Redis: "a-]" reads as the range a..], class left open
        {"[a-]", "a", true},
        {"[-ab]", "-", true},
        {"[ab-]", "-", false},  // Redis too: "b-]" is a range and the class stays open
        {"[]", "a", false},
        {"[]", "", false},
        {"[^]", "a", true},
        {"[abc", "b", true},  // unclosed class: closes at the end
        {"[abc", "bx", false},
        {"[\\]]", "]", true},
        {"[\\-a]", "-", true},
        {"[\\^]", "^", true},
        {"\\*", "*", true},
        {"\\*", "a", false},
        {"\\?", "?", true},
        {"\\?", "a", false},
        {"\\[a]", "[a]", true},
        {"a\\", "a\\", true},  // trailing backslash is itself
        {"a\\", "a", false},
        {"user:*:name", "user:42:name", true},
        {"user:*:name", "user:42:mail", false},
        {"*:*:*", "a:b:c", true},
        {"*:*:*", "a:b", false},
        {"a*b*c", "aXbYc", true},
        {"a*b*c", "aXbY", false},
        {"*a", "aaa", true},
        {"*ab", "aab", true},
        {"a*", "", false},
    };
    for (const Case& c : cases) {
        const bool got = glob_match(c.pattern, c.text);
        if (got != c.match) {
            std::printf("glob_match(\"%s\", \"%s\") = %d, want %d\n", c.pattern, c.text, got,
                        c.match);
        }
        CHECK(got == c.match);
    }
    // Embedded NUL bytes are ordinary characters.
    CHECK(glob_match(std::string_view("a\0b", 3), std::string_view("a\0b", 3)));
    CHECK(glob_match(std::string_view("a?b", 3), std::string_view("a\0b", 3)));
    CHECK(!glob_match("ab", std::string_view("a\0b", 3)));
    // High bytes compare unsigned in ranges.
    CHECK(glob_match("[\x80-\xff]", "\xe9"));
    CHECK(!glob_match("[\x80-\xff]", "e"));

    // Pathological stars: exponential with naive recursion, quadratic at worst here.
    std::string pat, text(4000, 'a');
    for (int i = 0; i < 200; ++i) pat += "a*";
    pat += "b";
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(!glob_match(pat, text));
    CHECK(glob_match(pat.substr(0, pat.size() - 1), text));
    CHECK(glob_match(pat, text + "b"));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("glob: pathological pattern (%zu chars, text %zu) in %.1f ms\n", pat.size(),
                text.size(), ms);
    CHECK(ms < 2000.0);
}

// --- concurrency -----------------------------------------------------------------------------

static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_stress() {
    constexpr int kThreads = 8;
    constexpr int kOpsPerThread = 40000;
    constexpr int kKeys = 24;
    std::vector<Objs> objs(kThreads);
    std::vector<std::string> keys;
    for (int i = 0; i < kKeys; ++i) keys.push_back("stress:" + std::to_string(i));
    std::atomic<long> dead_reads{0};
    std::atomic<long> failures{0};
    {
        // About ten entries' worth of bytes, sixteen entries: both bounds keep evicting.
        const std::size_t per = entry_charge("stress:00", Value{nullptr, 0, 64});
        Store s(small_config(16, 4, 4, 10 * per), kOps);
        auto worker = [&](int id) {
            std::uint64_t rng = 1234 + id;
            Objs& mine = objs[id];
            for (int i = 0; i < kOpsPerThread; ++i) {
                const double now = i * 0.01;
                const std::string& key = keys[splitmix64(rng) % kKeys];
                const std::uint64_t r = splitmix64(rng);
                const double ttl = (r >> 8) % 4 == 0 ? kNever : now + double((r >> 12) % 50) * 0.01;
                switch (r % 10) {
                    case 0:
                    case 1:
                    case 2: {
                        auto v = s.get(key, now);
                        if (v) {
                            auto* o = static_cast<Obj*>(v->handle);
                            if (o->refs.load() < 1) dead_reads.fetch_add(1);
                            obj_release(o);
                        }
                        break;
                    }
                    case 3:
                    case 4: {
                        Obj* o = mine.make((r >> 20) % 128);
                        s.set(key, Objs::value_of(o), ttl, now);
                        Objs::drop(o);
                        break;
                    }
                    case 5: {
                        Obj* o = mine.make((r >> 20) % 128);
                        s.add(key, Objs::value_of(o), ttl, now);
                        Objs::drop(o);
                        break;
                    }
                    case 6:
                        s.erase(key, now);
                        break;
                    case 7: {
                        const bool fail = (r >> 30) % 5 == 0;
                        try {
                            s.update(key, now, [&](const Value& old) -> Value {
                                if (static_cast<Obj*>(old.handle)->refs.load() < 1) {
                                    dead_reads.fetch_add(1);
                                }
                                if (fail) throw std::runtime_error("callback failed");
                                return Objs::value_of(mine.make((r >> 20) % 128));
                            });
                        } catch (const std::runtime_error&) {
                            if (!fail) failures.fetch_add(1);
                        }
                        break;
                    }
                    case 8:
                        s.touch(key, ttl, now);
                        s.expiry(key, now);
                        break;
                    default:
                        if ((r >> 40) % 50 == 0) {
                            s.erase_if(now, [](std::string_view k) { return k.back() == '7'; });
                        } else if ((r >> 40) % 50 == 1) {
                            s.keys(now);
                        } else {
                            s.contains(key, now);
                        }
                        break;
                }
            }
        };
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
        for (auto& th : threads) th.join();
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

        CHECK_EQ(s.check_invariants(), std::string());
        const StoreStats st = s.stats();
        const double past = -std::numeric_limits<double>::infinity();  // nothing is expired
        const auto live = s.keys(past);
        CHECK_EQ(st.entries, live.size());
        std::size_t bytes = 0;
        for (const std::string& k : live) {
            auto v = s.get(k, past);
            CHECK(v.has_value());
            if (v) {
                bytes += entry_charge(k, *v);
                obj_release(v->handle);
            }
        }
        CHECK_EQ(st.bytes, bytes);
        CHECK(st.bytes <= 10 * per);
        long refs = 0;
        for (const Objs& o : objs) refs += o.live_refs();
        CHECK_EQ(refs, static_cast<long>(st.entries));  // the store's references only
        CHECK(st.evictions > 0);
        CHECK(st.expirations > 0);
        std::printf(
            "stress: %d threads x %d ops in %.2f s; hits %llu misses %llu sets %llu "
            "evictions %llu expirations %llu\n",
            kThreads, kOpsPerThread, secs, (unsigned long long)st.hits,
            (unsigned long long)st.misses, (unsigned long long)st.sets,
            (unsigned long long)st.evictions, (unsigned long long)st.expirations);
    }
    long refs = 0;
    for (const Objs& o : objs) refs += o.live_refs();
    CHECK_EQ(refs, 0L);
    CHECK_EQ(dead_reads.load(), 0L);
    CHECK_EQ(failures.load(), 0L);
}

// --- hit ratio: SIEVE (the store) against LRU on a Zipf trace ----------------------------------

class Lru {
public:
    explicit Lru(std::size_t capacity) : cap_(capacity) {}
    bool access(std::uint32_t key) {
        auto it = map_.find(key);
        if (it != map_.end()) {
            order_.splice(order_.begin(), order_, it->second);
            return true;
        }
        if (map_.size() == cap_) {
            map_.erase(order_.back());
            order_.pop_back();
        }
        order_.push_front(key);
        map_.emplace(key, order_.begin());
        return false;
    }

private:
    std::size_t cap_;
    std::list<std::uint32_t> order_;
    std::unordered_map<std::uint32_t, std::list<std::uint32_t>::iterator> map_;
};

static void test_hit_ratio_zipf() {
    constexpr std::uint32_t kKeys = 100000;
    constexpr int kRequests = 1000000;
    constexpr double kAlpha = 0.99;
    std::vector<double> cdf(kKeys);
    double sum = 0;
    for (std::uint32_t i = 0; i < kKeys; ++i) cdf[i] = (sum += 1.0 / std::pow(i + 1.0, kAlpha));
    std::vector<std::uint32_t> trace(kRequests);
    std::uint64_t rng = 42;
    for (auto& t : trace) {
        const double u = double(splitmix64(rng) >> 11) * 0x1.0p-53 * sum;
        t = static_cast<std::uint32_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
        if (t >= kKeys) t = kKeys - 1;
    }
    std::vector<std::string> names(kKeys);
    for (std::uint32_t i = 0; i < kKeys; ++i) names[i] = "zipf:" + std::to_string(i);

    for (double fraction : {0.01, 0.10}) {
        const auto cap = static_cast<std::size_t>(kKeys * fraction);
        Lru lru(cap);
        long lru_hits = 0;
        for (auto k : trace) lru_hits += lru.access(k);

        StoreConfig c;
        c.max_entries = cap;
        c.cull_frequency = static_cast<unsigned>(cap);  // cap/cap: one victim per new key
        c.max_bytes = std::numeric_limits<std::size_t>::max();
        Store s(c, kOps);
        long sieve_hits = 0;
        for (auto k : trace) {
            if (s.get(names[k], 0.0)) {
                ++sieve_hits;
            } else {
                s.set(names[k], Value{}, kNever, 0.0);
            }
        }
        CHECK(s.stats().entries <= cap);
        const double hs = double(sieve_hits) / kRequests, hl = double(lru_hits) / kRequests;
        std::printf(
            "hit ratio: zipf(%.2f) %u keys, %d requests, cache %zu (%.0f%%): "
            "SIEVE %.4f  LRU %.4f  (miss ratio SIEVE/LRU %.3f)\n",
            kAlpha, kKeys, kRequests, cap, fraction * 100, hs, hl, (1 - hs) / (1 - hl));
        CHECK(hs >= hl);
    }
}

int main() {
    test_ttl_and_get();
    test_get_retains_for_caller();
    test_replace_and_add();
    test_touch_expiry_erase();
    test_keys_and_erase_if();
    test_config_rounding();
    test_cull_counts();
    test_sieve_order();
    test_byte_bound();
    test_update();
    test_reentrant_handle_ops();
    test_glob();
    test_stress();
    test_hit_ratio_zipf();
    CHECK_EQ(g_bad_retains.load(), 0L);
    CHECK_EQ(g_bad_releases.load(), 0L);
    return check_report();
}
