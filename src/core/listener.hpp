// The invalidation listener: a native thread that keeps an L1 store coherent with Redis
// through server-assisted client-side caching, without ever needing the interpreter.
#pragma once

#include <poll.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/coherence.hpp"

namespace fastcache {

// One Redis primary to listen to: TCP host and port, or a unix socket path.
struct ListenerEndpoint {
    std::string host;
    int port = 6379;
    std::string unix_path;  // when not empty, used instead of host and port
};

struct ListenerConfig {
    std::vector<ListenerEndpoint> endpoints;  // one connection each (a cluster's primaries)
    std::string username;                     // AUTH username (empty: the default user)
    std::string password;                     // AUTH password (empty: no AUTH)
    std::vector<std::string> prefixes;        // tracked key prefixes; empty: every key
    double connect_timeout = 1.0;             // seconds, per connection step
    double ping_interval = 0.5;               // seconds between health checks
    double pong_deadline = 1.0;               // a PING unanswered this long: the link is dead
    double max_backoff = 1.0;                 // seconds between reconnection attempts, at most
    double (*clock)() = nullptr;              // the store's clock, for `now` (required)
};

enum class ListenerState : int {
    stopped = 0,    // no thread (never started, stopped, or in a forked child): L1 bypassed
    resetting = 1,  // connecting or reconnecting: the L1 is empty and bypassed
    up = 2,         // every connection tracks and is subscribed: the L1 is in use
};

struct ListenerStats {
    ListenerState state = ListenerState::stopped;
    std::uint64_t connections = 0;  // subscribed connections now
    std::uint64_t messages = 0;     // invalidation messages received
    std::uint64_t keys = 0;         // keys they named
    std::uint64_t flushes = 0;      // null invalidations (FLUSHDB / FLUSHALL)
    std::uint64_t downs = 0;        // times it went from up to not up
    std::uint64_t ups = 0;          // times it came up
    std::uint64_t starts = 0;       // threads started (in this process)
    std::uint64_t pings = 0;        // health checks answered
    std::string last_error;
};

// How it works: for each endpoint, a connection of its own (RESP2) sends AUTH if a
// password is set, CLIENT ID, CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX <p>...
// (a connection may redirect to itself) and SUBSCRIBE __redis__:invalidate. Once every
// connection is subscribed, the coherence is reset to usable (messages may have been
// missed before) and the state is `up`. Each message's keys are invalidated at once, from
// this thread, with the store's handles buried in the Coherence for a thread that may
// release them. A null message (a flush) resets the L1. Any doubt (a connection closed or
// failing, an error reply, a PING unanswered within pong_deadline, restart() called) makes
// it reset the L1 to unusable, close every connection and reconnect with backoff.
//
// Fork: a child has no listener thread. A pthread_atfork handler waits for the thread to
// be between messages in the parent, and in the child closes the copies of its sockets
// (close only, never shutdown: the parent's connections are unaffected), marks the
// coherence unusable with every token void (disable_without_store: the child's runtime
// must clear the store itself before first use) and the listener `stopped`. The next
// start() in the child starts one new thread with new connections.
//
// Thread safety: every public member may be called from any thread. The Coherence must
// outlive the listener. Destruction stops and joins the thread.
class Listener {
public:
    explicit Listener(Coherence& coherence);
    ~Listener();
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    // Replaces the configuration; a running listener resets the L1 to unusable at once
    // and reconnects with it. Handles the store gives up go to `released` (as below).
    void configure(ListenerConfig config, Released& released);
    // Starts the thread if there is none (idempotent). Returns whether it started one.
    // Throws std::runtime_error if no thread can be created.
    bool start();
    // Stops and joins the thread; the L1 is reset to unusable.
    void stop(Released& released);
    // Something went wrong elsewhere: reset the L1 to unusable now and reconnect.
    void restart(Released& released);
    // Resets the coherence (a flush: every token void, the store emptied) from another
    // thread. While this listener runs, the L1 stays usable only if the listener is up: a
    // caller that read "usable" before the listener went down cannot turn it back on.
    // While it does not run, `usable` is the caller's to decide (the Python listener's).
    void reset_coherence(bool usable, Released& released);
    ListenerStats stats() const;
    bool running() const noexcept { return running_.load(std::memory_order_acquire); }
    // Whether an invalidation may have reached this process and not been applied yet:
    // bytes unread on one of the listener's sockets, or a batch being read or applied.
    // A reader that gets true should not trust the L1 for this read (it asks Redis);
    // false means every invalidation whose bytes were in this process's sockets when the
    // call began has been applied. One poll(2) with no wait. Also true, conservatively,
    // for a PONG or a handshake reply not read yet.
    bool pending() const;

    // For the fork handlers (see the class comment).
    void before_fork() noexcept;
    void after_fork_parent() noexcept;
    void after_fork_child() noexcept;

    struct Link;  // one connection (listener.cpp)

private:
    static void* thread_main(void* self);
    void run();
    void connect_all(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen);
    void connect_one(Link& link, const ListenerEndpoint& ep, const ListenerConfig& cfg,
                     std::uint64_t gen);
    void serve(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen);
    void serve_loop(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen,
                    Released& released, std::vector<pollfd>& fds, const std::string& ping,
                    double next_ping);
    // Under work_mu_: the state leaves `up`, the L1 is reset to unusable.
    void go_down_locked(Released& released, ListenerState next);
    void close_links(std::vector<Link>& links);
    // Waits until `fd` is ready for `events` (poll flags) or `deadline` (steady seconds);
    // throws when the deadline passes or the listener is told to stop or restart.
    void wait_for(int fd, short events, double deadline, std::uint64_t gen);
    bool wait_wake(double seconds);  // true when woken
    void wake() noexcept;
    void drain_wake() noexcept;
    bool told_to_leave(std::uint64_t gen) const noexcept {
        return stop_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != gen;
    }
    double now(const ListenerConfig& cfg) const { return cfg.clock ? cfg.clock() : 0.0; }
    void set_error(const std::string& e);

    Coherence& coherence_;
    // Lock order: work_mu_ before cfg_mu_ when both are taken.
    std::mutex work_mu_;         // state transitions, and this thread touching the store
    mutable std::mutex cfg_mu_;  // config_, last_error_, open_fds_, thread lifecycle
    ListenerConfig config_;
    std::atomic<std::uint64_t> generation_{0};  // bumped by configure() and restart()
    std::string last_error_;
    pthread_t thread_{};
    std::atomic<bool> running_{false};
    std::atomic<bool> stop_{false};
    int wake_[2] = {-1, -1};
    std::vector<int> open_fds_;  // sockets of the running thread, for the fork handler
    std::atomic<int> state_{0};
    std::atomic<int> applying_{0};  // set before a recv, cleared once its batch is applied
    std::atomic<std::uint64_t> connections_{0}, messages_{0}, keys_{0}, flushes_{0}, downs_{0},
        ups_{0}, starts_{0}, pings_{0};
};

}  // namespace fastcache
