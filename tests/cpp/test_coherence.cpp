// Tests for the coherent L1's rules (src/core/coherence.hpp), the RESP2 reader
// (src/core/resp.hpp) and the native invalidation listener (src/core/listener.hpp) against
// a scripted fake server. The fill race is run with real threads and checked for
// monotonic reads. Prints "N passed, N failed" last.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "check.hpp"
#include "core/coherence.hpp"
#include "core/listener.hpp"
#include "core/resp.hpp"
#include "core/store.hpp"

using namespace fastcache;

// Handles are small integers cast to pointers (never null); retain/release are counted so
// the tests can see that nothing is released where it must only be handed back.
static std::atomic<long> g_retains{0}, g_releases{0};
static void count_retain(void*) noexcept { g_retains.fetch_add(1); }
static void count_release(void*) noexcept { g_releases.fetch_add(1); }
static constexpr HandleOps kCounted{&count_retain, &count_release};

static void* handle_of(std::uint64_t v) {
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(v + 1));
}
static std::uint64_t value_of(void* h) {
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(h)) - 1;
}
static Value val(std::uint64_t v, std::size_t charge = 8) { return Value{handle_of(v), 0, charge}; }

static long held(const Released& r) { return static_cast<long>(r.size()); }

// Releases what a call handed back (the bindings do this with the GIL).
static void give_back(Released& r) {
    for (void* h : r) count_release(h);
    r.clear();
}

static std::int64_t read(Store& s, const std::string& k, double now = 1) {
    auto v = s.get(k, now);
    if (!v) return -1;
    count_release(v->handle);
    return static_cast<std::int64_t>(value_of(v->handle));
}

static void test_one_fill_per_token() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    Released r;
    auto t = c.token("k");
    CHECK(c.fill("k", val(1), 100, 1, t, SIZE_MAX, r));
    CHECK_EQ(read(store, "k"), 1);
    // A second fill taken under the same token loses, and takes the entry with it: it may
    // hold a newer value than the winner's, and a later read must not see the older one.
    CHECK(!c.fill("k", val(2), 100, 1, t, SIZE_MAX, r));
    CHECK_EQ(read(store, "k"), -1);
    CHECK_EQ(c.stats().fills, 1u);
    CHECK_EQ(c.stats().refused, 1u);
    // Nothing released under the call: the replaced and refused handles are handed back.
    long before = g_releases.load();
    give_back(r);
    CHECK(g_releases.load() > before);
    CHECK_EQ(held(r), 0);
}

static void test_invalidation_during_a_fill_refuses_it() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    Released r;
    auto t = c.token("k");
    c.invalidate("k", 1, r);  // arrived while the read was in flight
    CHECK(!c.fill("k", val(1), 100, 1, t, SIZE_MAX, r));
    CHECK_EQ(read(store, "k"), -1);
    // Stored first, invalidated after: gone.
    t = c.token("k");
    CHECK(c.fill("k", val(3), 100, 1, t, SIZE_MAX, r));
    c.invalidate("k", 1, r);
    CHECK_EQ(read(store, "k"), -1);
    CHECK_EQ(c.stats().invalidated, 2u);
    give_back(r);
}

static void test_writes_and_resets() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    Released r;
    auto t = c.token("k");
    Value v = val(5);
    CHECK(c.write("k", &v, 100, 1, t, r));
    CHECK_EQ(read(store, "k"), 5);
    // A write whose token went stale (an invalidation came in between) drops the key.
    t = c.token("k");
    c.invalidate("other-key-same-or-not", 1, r);
    c.invalidate("k", 1, r);
    Value w = val(6);
    CHECK(!c.write("k", &w, 100, 1, t, r));
    CHECK_EQ(read(store, "k"), -1);
    // A write that keeps nothing bumps the token too.
    t = c.token("k");
    CHECK(!c.write("k", nullptr, 100, 1, t, r));
    CHECK(c.token("k") != t);

    // Down: unusable, cleared, every earlier token void; up: usable, empty.
    t = c.token("k");
    CHECK(c.fill("k", val(7), 100, 1, t, SIZE_MAX, r));
    auto t2 = c.token("z");
    c.reset(false, r);
    CHECK(!c.usable());
    CHECK_EQ(static_cast<long>(store.stats().entries), 0L);
    CHECK(!c.fill("z", val(8), 100, 1, t2, SIZE_MAX, r));
    c.reset(true, r);
    CHECK(c.usable());
    CHECK(!c.fill("z", val(8), 100, 1, t2, SIZE_MAX, r));
    CHECK(c.fill("z", val(9), 100, 1, c.token("z"), SIZE_MAX, r));
    CHECK_EQ(c.stats().resets, 2u);
    // Too large for the L1: refused, and the key is not left behind.
    CHECK(!c.fill("z", val(10, 1000), 100, 1, c.token("z"), 999, r));
    CHECK_EQ(read(store, "z"), -1);
    give_back(r);
    // disable_without_store (a forked child): unusable, tokens void, entries untouched.
    CHECK(c.fill("y", val(11), 100, 1, c.token("y"), SIZE_MAX, r));
    t = c.token("y");
    c.disable_without_store();
    CHECK(!c.usable() && c.token("y") != t);
    CHECK_EQ(static_cast<long>(store.stats().entries), 1L);
    c.reset(false, r);
    give_back(r);
}

static void test_graveyard() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    Released r{handle_of(1), handle_of(2)};
    CHECK(!c.buried());
    c.bury(r);
    CHECK(c.buried() && r.empty());
    Released dead = c.exhume();
    CHECK_EQ(static_cast<long>(dead.size()), 2L);
    CHECK(!c.buried());
    give_back(dead);
}

static void test_store_hands_back_handles() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Released r;
    long before = g_releases.load();
    store.set("a", val(1), 100, 1, &r);
    store.set("a", val(2), 100, 1, &r);  // replaces: the old handle is handed back
    CHECK_EQ(held(r), 1L);
    store.erase("a", 1, &r);
    CHECK_EQ(held(r), 2L);
    store.set("b", val(3), 100, 1);
    store.clear(&r);
    CHECK_EQ(held(r), 3L);
    CHECK_EQ(g_releases.load(), before);
    give_back(r);
}

// The fill race with real threads: a "server" (an atomic version, linearizable), a writer
// that bumps it and has a separate "listener" thread deliver the invalidation after a
// delay, and readers that serve hits from the store and fill on a miss. With a logical
// clock, no read that began after another ended may return an older version; at the end,
// once every invalidation is delivered, the store holds the last version or nothing.
static void test_fill_race_keeps_reads_monotonic() {
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    std::atomic<std::uint64_t> server{0};
    std::atomic<std::uint64_t> clock{0};
    std::atomic<bool> done{false};
    std::mutex qmu;
    using Clock = std::chrono::steady_clock;
    std::deque<Clock::time_point> pending;  // writes whose invalidation is not delivered yet
    struct Read {
        std::uint64_t start, end, value;
    };
    const int kReaders = 4;
    std::vector<std::vector<Read>> reads(kReaders);

    std::thread listener([&] {
        Released r;
        for (;;) {
            {
                std::lock_guard<std::mutex> lock(qmu);
                if (done.load() && pending.empty()) break;
            }
            // Delivered 200 us after the write, as a real listener's message arrives well
            // after the write's reply: the window in which two fills of one token race.
            int n = 0;
            {
                std::lock_guard<std::mutex> lock(qmu);
                const auto due = Clock::now() - std::chrono::microseconds(200);
                while (!pending.empty() && (pending.front() <= due || done.load())) {
                    pending.pop_front();
                    ++n;
                }
            }
            for (int i = 0; i < n; ++i) c.invalidate("m", 1, r);
            std::this_thread::yield();
        }
        std::lock_guard<std::mutex> lock(qmu);
        c.bury(r);
    });
    std::atomic<bool> written{false};
    std::thread writer([&] {
        for (int v = 0; v < 5000; ++v) {
            server.fetch_add(1);
            {
                std::lock_guard<std::mutex> lock(qmu);
                pending.push_back(Clock::now());
            }
            std::this_thread::yield();
        }
        written.store(true);
    });
    std::vector<std::thread> readers;
    for (int t = 0; t < kReaders; ++t) {
        readers.emplace_back([&, t] {
            Released r;
            for (int i = 0; !written.load() || i < 1000; ++i) {
                if (i % 16 == 0) std::this_thread::yield();
                Read rd{clock.fetch_add(1), 0, 0};
                auto hit = store.get("m", 1);
                if (hit) {
                    rd.value = value_of(hit->handle);
                    count_release(hit->handle);
                } else {
                    auto token = c.token("m");
                    rd.value = server.load();                   // the read sent to the server
                    if (i % 3 == 0) std::this_thread::yield();  // a slow reply
                    c.fill("m", val(rd.value), 100, 1, token, SIZE_MAX, r);
                }
                rd.end = clock.fetch_add(1);
                reads[t].push_back(rd);
                if (r.size() > 64) give_back(r);
            }
            give_back(r);
        });
    }
    for (auto& th : readers) th.join();
    writer.join();
    done.store(true);
    listener.join();
    Released dead = c.exhume();
    give_back(dead);

    std::vector<Read> all;
    for (auto& v : reads) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end(), [](const Read& a, const Read& b) { return a.end < b.end; });
    std::vector<std::uint64_t> best(all.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        best[i] = std::max(all[i].value, i ? best[i - 1] : 0);
    }
    long backwards = 0;
    for (const Read& rd : all) {
        // Reads that ended before this one began: the newest version they returned.
        auto it = std::lower_bound(all.begin(), all.end(), rd.start,
                                   [](const Read& a, std::uint64_t s) { return a.end < s; });
        if (it == all.begin()) continue;
        if (best[static_cast<std::size_t>(it - all.begin()) - 1] > rd.value) ++backwards;
    }
    std::printf("fill race: %zu reads, %ld backwards, %llu fills, %llu refused\n", all.size(),
                backwards, static_cast<unsigned long long>(c.stats().fills),
                static_cast<unsigned long long>(c.stats().refused));
    CHECK_EQ(backwards, 0L);
    const std::int64_t last = read(store, "m");
    CHECK(last == -1 || last == static_cast<std::int64_t>(server.load()));
    CHECK(c.stats().fills > 100);  // the race was run, not just hits
    Released r;
    c.reset(false, r);
    give_back(r);
}

static void test_resp_reader() {
    resp::Reader rd;
    resp::Reply r;
    const std::string msg =
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$3\r\nk:1\r\n$0\r\n\r\n";
    // Fed a byte at a time: nothing until the last byte, then exactly the message.
    for (std::size_t i = 0; i + 1 < msg.size(); ++i) {
        rd.feed(&msg[i], 1);
        CHECK(!rd.next(r));
    }
    rd.feed(&msg.back(), 1);
    CHECK(rd.next(r));
    CHECK(r.kind == '*' && r.elements.size() == 3 && r.elements[0].is("MESSAGE"));
    CHECK(r.elements[2].elements.size() == 2 && r.elements[2].elements[0].text == "k:1");
    CHECK(r.elements[2].elements[1].text.empty() && !r.elements[2].elements[1].null);
    CHECK_EQ(static_cast<long>(rd.buffered()), 0L);
    const std::string more =
        "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n*-1\r\n+OK\r\n:42\r\n-ERR no\r\n$-1\r\n";
    rd.feed(more.data(), more.size());
    CHECK(rd.next(r) && r.elements[2].null);
    CHECK(rd.next(r) && r.is("ok"));
    CHECK(rd.next(r) && r.kind == ':' && r.integer == 42);
    CHECK(rd.next(r) && r.is_error() && r.text == "ERR no");
    CHECK(rd.next(r) && r.kind == '$' && r.null);
    CHECK(!rd.next(r));
    for (const std::string bad :
         {"?x\r\n", "$abc\r\n", "$3\r\nabcde\r\n", ":99999999999999999999\r\n"}) {
        resp::Reader b;
        b.feed(bad.data(), bad.size());
        bool threw = false;
        try {
            b.next(r);
        } catch (const resp::ProtocolError&) {
            threw = true;
        }
        CHECK(threw);
    }
    std::string deep;
    for (int i = 0; i < 20; ++i) deep += "*1\r\n";
    resp::Reader d;
    d.feed(deep.data(), deep.size());
    bool threw = false;
    try {
        d.next(r);
    } catch (const resp::ProtocolError&) {
        threw = true;
    }
    CHECK(threw);
    CHECK(resp::command({"GET", "a b"}) == "*2\r\n$3\r\nGET\r\n$3\r\na b\r\n");
}

// --- the listener against a scripted fake Redis ----------------------------------------------

// Accepts connections on 127.0.0.1; answers CLIENT ID, CLIENT TRACKING, SUBSCRIBE and PING
// as Redis does for a subscribed RESP2 connection, and records the commands it got. The
// test pushes messages with send_to_all() and cuts connections with drop_all().
class FakeRedis {
public:
    FakeRedis() {
        lfd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(lfd_, 8);
        socklen_t n = sizeof a;
        ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &n);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~FakeRedis() {
        stop_ = true;
        thread_.join();
        drop_all();
        ::close(lfd_);
    }
    int port() const { return port_; }
    bool answer_pings = true;
    std::atomic<int> accepted{0}, subscribed{0};

    void send_to_all(const std::string& data) {
        std::lock_guard<std::mutex> lock(mu_);
        for (int fd : conns_) ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    }
    void drop_all() {
        std::lock_guard<std::mutex> lock(mu_);
        for (int fd : conns_) ::close(fd);
        conns_.clear();
        readers_.clear();
    }
    std::vector<std::string> commands() {
        std::lock_guard<std::mutex> lock(mu_);
        return commands_;
    }

private:
    void run() {
        while (!stop_) {
            std::vector<pollfd> fds{{lfd_, POLLIN, 0}};
            {
                std::lock_guard<std::mutex> lock(mu_);
                for (int fd : conns_) fds.push_back({fd, POLLIN, 0});
            }
            if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
            std::lock_guard<std::mutex> lock(mu_);
            if (fds[0].revents & POLLIN) {
                int fd = ::accept(lfd_, nullptr, nullptr);
                conns_.push_back(fd);
                readers_.emplace_back();
                accepted++;
            }
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (!fds[i].revents) continue;
                auto pos = std::find(conns_.begin(), conns_.end(), fds[i].fd);
                if (pos == conns_.end()) continue;
                std::size_t idx = static_cast<std::size_t>(pos - conns_.begin());
                char buf[4096];
                ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
                if (n <= 0) continue;
                readers_[idx].feed(buf, static_cast<std::size_t>(n));
                resp::Reply r;
                while (readers_[idx].next(r)) {
                    std::string cmd;
                    for (auto& e : r.elements) cmd += (cmd.empty() ? "" : " ") + e.text;
                    commands_.push_back(cmd);
                    std::string out;
                    if (r.elements[0].is("CLIENT") && r.elements[1].is("ID"))
                        out = ":7\r\n";
                    else if (r.elements[0].is("CLIENT"))
                        out = "+OK\r\n";
                    else if (r.elements[0].is("AUTH"))
                        out = "+OK\r\n";
                    else if (r.elements[0].is("SUBSCRIBE")) {
                        out = "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n";
                        subscribed++;
                    } else if (r.elements[0].is("PING")) {
                        if (answer_pings) out = "*2\r\n$4\r\npong\r\n$0\r\n\r\n";
                    }
                    ::send(fds[i].fd, out.data(), out.size(), MSG_NOSIGNAL);
                }
            }
        }
    }
    int lfd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mu_;
    std::vector<int> conns_;
    std::deque<resp::Reader> readers_;
    std::vector<std::string> commands_;
};

static double fake_clock() { return 1.0; }

template <class F>
static bool eventually(F f, double seconds = 10) {
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
        if (f()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return f();
}

static std::string invalidate_msg(const std::vector<std::string>& keys) {
    std::string s = "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*" +
                    std::to_string(keys.size()) + "\r\n";
    for (auto& k : keys) s += "$" + std::to_string(k.size()) + "\r\n" + k + "\r\n";
    return s;
}

static void test_listener_against_a_fake_server() {
    FakeRedis redis;
    Store store(StoreConfig{1 << 20, 1000, 3, 4}, kCounted);
    Coherence c(store);
    Listener listener(c);
    ListenerConfig cfg;
    cfg.endpoints = {{"127.0.0.1", redis.port(), ""}};
    cfg.username = "u";
    cfg.password = "p";
    cfg.prefixes = {"app:", "other:"};
    cfg.ping_interval = 0.05;
    cfg.pong_deadline = 0.3;
    cfg.max_backoff = 0.05;
    cfg.clock = &fake_clock;
    Released r;
    listener.configure(cfg, r);
    CHECK(listener.start());
    CHECK(!listener.start());  // idempotent
    CHECK(eventually([&] { return listener.stats().state == ListenerState::up; }));
    CHECK(c.usable());
    auto cmds = redis.commands();
    CHECK(cmds.size() >= 4);
    if (cmds.size() >= 4) {
        CHECK(cmds[0] == "AUTH u p");
        CHECK(cmds[1] == "CLIENT ID");
        CHECK(cmds[2] == "CLIENT TRACKING on REDIRECT 7 BCAST PREFIX app: PREFIX other:");
        CHECK(cmds[3] == "SUBSCRIBE __redis__:invalidate");
    }

    // A message drops the named keys, from the listener's thread, releasing nothing there.
    CHECK(c.fill("app:a", val(1), 100, 1, c.token("app:a"), SIZE_MAX, r));
    CHECK(c.fill("app:b", val(2), 100, 1, c.token("app:b"), SIZE_MAX, r));
    long releases = g_releases.load();
    redis.send_to_all(invalidate_msg({"app:a"}));
    CHECK(eventually([&] { return listener.stats().keys == 1; }));
    CHECK_EQ(read(store, "app:a"), -1);
    CHECK_EQ(read(store, "app:b"), 2);
    CHECK_EQ(g_releases.load(), releases + 1);  // only this thread's read of app:b
    CHECK(c.buried());
    Released dead = c.exhume();
    CHECK_EQ(held(dead), 1L);
    give_back(dead);

    // A null message (a flush) empties the L1 and keeps it in use.
    redis.send_to_all("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*-1\r\n");
    CHECK(eventually([&] { return listener.stats().flushes == 1; }));
    CHECK_EQ(read(store, "app:b"), -1);
    CHECK(c.usable());

    // PINGs are answered; a dropped connection resets and reconnects.
    CHECK(eventually([&] { return listener.stats().pings >= 2; }));
    redis.drop_all();
    CHECK(eventually([&] { return listener.stats().downs == 1; }));
    CHECK(eventually([&] { return listener.stats().ups == 2 && c.usable(); }));
    CHECK_EQ(redis.accepted.load(), 2);

    // Unanswered PINGs: down within the deadline, bypassed, then back when answered again.
    redis.answer_pings = false;
    CHECK(eventually([&] { return listener.stats().downs == 2; }, 5));
    redis.answer_pings = true;
    CHECK(eventually([&] { return listener.stats().state == ListenerState::up; }));

    // restart(): bypassed at once (in the caller's thread), then up again.
    auto ups = listener.stats().ups;
    listener.restart(r);
    CHECK(!c.usable() || listener.stats().ups > ups);
    CHECK(eventually([&] { return listener.stats().ups > ups && c.usable(); }));

    // A server that refuses the commands: never up; the error is kept.
    listener.stop(r);
    CHECK(!c.usable());
    CHECK(listener.stats().state == ListenerState::stopped);
    cfg.endpoints = {{"127.0.0.1", 1, ""}};  // nothing listens there
    listener.configure(cfg, r);
    CHECK(listener.start());
    CHECK(eventually([&] { return !listener.stats().last_error.empty(); }));
    CHECK(listener.stats().state != ListenerState::up && !c.usable());
    // A flush from another thread cannot turn the L1 back on while the listener is not up.
    listener.reset_coherence(true, r);
    CHECK(!c.usable());
    listener.stop(r);
    // With no listener running, usability is the caller's (the Python listener's) to say.
    listener.reset_coherence(true, r);
    CHECK(c.usable());
    listener.reset_coherence(false, r);
    CHECK(!c.usable());
    Released more = c.exhume();
    give_back(more);
    give_back(r);
}

int main() {
    test_one_fill_per_token();
    test_invalidation_during_a_fill_refuses_it();
    test_writes_and_resets();
    test_graveyard();
    test_store_hands_back_handles();
    test_fill_race_keeps_reads_monotonic();
    test_resp_reader();
    test_listener_against_a_fake_server();
    return check_report();
}
