// The native invalidation listener (see listener.hpp): connections, the thread, fork.
#include "core/listener.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "core/resp.hpp"

namespace fastcache {

namespace {

const char* const kChannel = "__redis__:invalidate";

double steady() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Every listener of the process, for the fork handlers. Leaked on purpose: a listener
// thread may outlive static destruction at exit.
std::mutex& registry_mu() {
    static auto* m = new std::mutex;
    return *m;
}
std::vector<Listener*>& registry() {
    static auto* v = new std::vector<Listener*>;
    return *v;
}

void prepare_fork() {
    registry_mu().lock();
    for (Listener* l : registry()) l->before_fork();
}
void parent_after_fork() {
    for (Listener* l : registry()) l->after_fork_parent();
    registry_mu().unlock();
}
void child_after_fork() {
    for (Listener* l : registry()) l->after_fork_child();
    registry_mu().unlock();
}

std::once_flag g_atfork_once;

std::string endpoint_name(const ListenerEndpoint& ep) {
    return ep.unix_path.empty() ? ep.host + ":" + std::to_string(ep.port) : ep.unix_path;
}

}  // namespace

struct Listener::Link {
    int fd = -1;
    std::string name;
    resp::Reader reader;
    double ping_sent = -1;  // steady seconds, -1: none outstanding
};

Listener::Listener(Coherence& coherence) : coherence_(coherence) {
    std::call_once(g_atfork_once,
                   [] { pthread_atfork(&prepare_fork, &parent_after_fork, &child_after_fork); });
    std::lock_guard<std::mutex> lock(registry_mu());
    registry().push_back(this);
}

Listener::~Listener() {
    Released released;
    stop(released);
    coherence_.bury(released);
    {
        std::lock_guard<std::mutex> lock(registry_mu());
        auto& r = registry();
        r.erase(std::remove(r.begin(), r.end(), this), r.end());
    }
    for (int& fd : wake_) {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
}

void Listener::configure(ListenerConfig config, Released& released) {
    {
        std::lock_guard<std::mutex> lock(cfg_mu_);
        config_ = std::move(config);
    }
    restart(released);
}

bool Listener::start() {
    std::lock_guard<std::mutex> lock(cfg_mu_);
    if (running_.load(std::memory_order_acquire)) return false;
    if (wake_[0] < 0 && ::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
        wake_[0] = wake_[1] = -1;
        throw std::runtime_error(std::string("cannot create the listener's pipe: ") +
                                 std::strerror(errno));
    }
    stop_.store(false, std::memory_order_release);
    state_.store(static_cast<int>(ListenerState::resetting), std::memory_order_release);
    const int rc = pthread_create(&thread_, nullptr, &Listener::thread_main, this);
    if (rc != 0) {
        state_.store(static_cast<int>(ListenerState::stopped), std::memory_order_release);
        throw std::runtime_error(std::string("cannot start the listener thread: ") +
                                 std::strerror(rc));
    }
    running_.store(true, std::memory_order_release);
    starts_.fetch_add(1, std::memory_order_relaxed);
    return true;
}

void Listener::stop(Released& released) {
    {
        std::lock_guard<std::mutex> lock(cfg_mu_);
        if (!running_.load(std::memory_order_acquire)) return;
        stop_.store(true, std::memory_order_release);
    }
    wake();
    pthread_join(thread_, nullptr);
    {
        std::lock_guard<std::mutex> lock(work_mu_);
        go_down_locked(released, ListenerState::stopped);
    }
    std::lock_guard<std::mutex> lock(cfg_mu_);
    running_.store(false, std::memory_order_release);
}

void Listener::restart(Released& released) {
    generation_.fetch_add(1, std::memory_order_acq_rel);
    {
        std::lock_guard<std::mutex> lock(work_mu_);
        if (running_.load(std::memory_order_acquire)) {
            go_down_locked(released, ListenerState::resetting);
        }
    }
    wake();
}

void Listener::reset_coherence(bool usable, Released& released) {
    std::lock_guard<std::mutex> lock(work_mu_);
    if (running_.load(std::memory_order_acquire) &&
        state_.load(std::memory_order_acquire) != static_cast<int>(ListenerState::up)) {
        usable = false;
    }
    coherence_.reset(usable, released);
}

ListenerStats Listener::stats() const {
    ListenerStats s;
    s.state = static_cast<ListenerState>(state_.load(std::memory_order_acquire));
    s.connections = connections_.load(std::memory_order_relaxed);
    s.messages = messages_.load(std::memory_order_relaxed);
    s.keys = keys_.load(std::memory_order_relaxed);
    s.flushes = flushes_.load(std::memory_order_relaxed);
    s.downs = downs_.load(std::memory_order_relaxed);
    s.ups = ups_.load(std::memory_order_relaxed);
    s.starts = starts_.load(std::memory_order_relaxed);
    s.pings = pings_.load(std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(cfg_mu_);
    s.last_error = last_error_;
    return s;
}

void Listener::set_error(const std::string& e) {
    std::lock_guard<std::mutex> lock(cfg_mu_);
    last_error_ = e;
}

void Listener::go_down_locked(Released& released, ListenerState next) {
    if (state_.exchange(static_cast<int>(next), std::memory_order_acq_rel) ==
        static_cast<int>(ListenerState::up)) {
        downs_.fetch_add(1, std::memory_order_relaxed);
    }
    connections_.store(0, std::memory_order_relaxed);
    coherence_.reset(false, released);
}

void Listener::wake() noexcept {
    if (wake_[1] >= 0) {
        const char b = 1;
        ssize_t n = ::write(wake_[1], &b, 1);  // a full pipe already wakes the thread
        (void)n;
    }
}

void Listener::drain_wake() noexcept {
    char buf[64];
    while (::read(wake_[0], buf, sizeof buf) > 0) {
    }
}

bool Listener::wait_wake(double seconds) {
    pollfd p{wake_[0], POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(seconds * 1000));
    if (rc > 0) {
        drain_wake();
        return true;
    }
    return false;
}

// --- the thread ----------------------------------------------------------------------------

void* Listener::thread_main(void* self) {
    // Signals are for the interpreter's main thread, never this one.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    static_cast<Listener*>(self)->run();
    return nullptr;
}

void Listener::run() {
    double backoff = 0.02;
    while (!stop_.load(std::memory_order_acquire)) {
        ListenerConfig cfg;
        const std::uint64_t gen = generation_.load(std::memory_order_acquire);
        {
            std::lock_guard<std::mutex> lock(cfg_mu_);
            cfg = config_;
        }
        std::vector<Link> links;
        try {
            if (cfg.endpoints.empty()) throw Failure("no endpoint configured");
            connect_all(links, cfg, gen);
            {
                std::lock_guard<std::mutex> lock(work_mu_);
                if (told_to_leave(gen)) throw Failure("reconfigured while connecting");
                // Messages may have been missed while no connection was subscribed.
                Released released;
                coherence_.reset(true, released);
                coherence_.bury(released);
                connections_.store(links.size(), std::memory_order_relaxed);
                state_.store(static_cast<int>(ListenerState::up), std::memory_order_release);
                ups_.fetch_add(1, std::memory_order_relaxed);
            }
            backoff = 0.02;
            serve(links, cfg, gen);
        } catch (const std::exception& e) {
            set_error(e.what());
        } catch (const resp::ProtocolError& e) {
            set_error("protocol error: " + e.what);
        }
        {
            std::lock_guard<std::mutex> lock(work_mu_);
            Released released;
            go_down_locked(released, ListenerState::resetting);
            coherence_.bury(released);
        }
        close_links(links);
        if (stop_.load(std::memory_order_acquire)) break;
        if (generation_.load(std::memory_order_acquire) != gen) continue;  // at once
        wait_wake(backoff);
        backoff = std::min(backoff * 2, cfg.max_backoff);
    }
}

void Listener::close_links(std::vector<Link>& links) {
    std::lock_guard<std::mutex> lock(cfg_mu_);
    for (Link& l : links) {
        if (l.fd < 0) continue;
        open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), l.fd), open_fds_.end());
        ::close(l.fd);
        l.fd = -1;
    }
    links.clear();
}

void Listener::wait_for(int fd, short events, double deadline, std::uint64_t gen) {
    for (;;) {
        if (told_to_leave(gen)) throw Failure("told to stop or reconnect");
        const double left = deadline - steady();
        if (left <= 0) throw Failure("timed out");
        pollfd p[2] = {{fd, events, 0}, {wake_[0], POLLIN, 0}};
        const int rc = ::poll(p, 2, static_cast<int>(left * 1000) + 1);
        if (rc < 0 && errno != EINTR) throw Failure(std::string("poll: ") + std::strerror(errno));
        if (rc > 0 && (p[1].revents & POLLIN)) drain_wake();
        if (rc > 0 && p[0].revents) return;
    }
}

namespace {

void send_all(Listener& self, int fd, const std::string& data,
              void (Listener::*wait)(int, short, double, std::uint64_t), double deadline,
              std::uint64_t gen) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            (self.*wait)(fd, POLLOUT, deadline, gen);
        } else {
            throw Failure(std::string("send: ") + std::strerror(errno));
        }
    }
}

// Reads what the socket has into `reader`; throws when the peer closed or failed.
void receive(int fd, resp::Reader& reader, const std::string& name) {
    char buf[65536];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            reader.feed(buf, static_cast<std::size_t>(n));
            if (static_cast<std::size_t>(n) < sizeof buf) return;
        } else if (n == 0) {
            throw Failure(name + " closed the connection");
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else if (errno != EINTR) {
            throw Failure(name + ": recv: " + std::strerror(errno));
        }
    }
}

}  // namespace

void Listener::connect_one(Link& link, const ListenerEndpoint& ep, const ListenerConfig& cfg,
                           std::uint64_t gen) {
    const double deadline = steady() + cfg.connect_timeout;
    link.name = endpoint_name(ep);
    auto wait = &Listener::wait_for;
    auto opened = [&](int fd) {
        std::lock_guard<std::mutex> lock(cfg_mu_);
        link.fd = fd;
        open_fds_.push_back(fd);
    };
    auto connect_fd = [&](int family, const sockaddr* addr, socklen_t len) {
        const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) throw Failure(std::string("socket: ") + std::strerror(errno));
        opened(fd);
        if (::connect(fd, addr, len) != 0) {
            if (errno != EINPROGRESS) {
                throw Failure("connect to " + link.name + ": " + std::strerror(errno));
            }
            wait_for(fd, POLLOUT, deadline, gen);
            int err = 0;
            socklen_t n = sizeof err;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n);
            if (err != 0) throw Failure("connect to " + link.name + ": " + std::strerror(err));
        }
        if (family != AF_UNIX) {
            const int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        }
    };
    if (!ep.unix_path.empty()) {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (ep.unix_path.size() >= sizeof addr.sun_path) throw Failure("unix socket path too long");
        std::memcpy(addr.sun_path, ep.unix_path.data(), ep.unix_path.size());
        connect_fd(AF_UNIX, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    } else {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* found = nullptr;
        const std::string port = std::to_string(ep.port);
        const int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &found);
        if (rc != 0 || found == nullptr) {
            throw Failure("cannot resolve " + link.name + ": " + ::gai_strerror(rc));
        }
        try {
            connect_fd(found->ai_family, found->ai_addr, found->ai_addrlen);
        } catch (...) {
            ::freeaddrinfo(found);
            throw;
        }
        ::freeaddrinfo(found);
    }

    auto reply = [&]() {
        resp::Reply r;
        while (!link.reader.next(r)) {
            wait_for(link.fd, POLLIN, deadline, gen);
            receive(link.fd, link.reader, link.name);
        }
        if (r.is_error()) throw Failure(link.name + " answered: " + r.text);
        return r;
    };
    std::string out;
    if (!cfg.password.empty()) {
        out += cfg.username.empty() ? resp::command({"AUTH", cfg.password})
                                    : resp::command({"AUTH", cfg.username, cfg.password});
    }
    out += resp::command({"CLIENT", "ID"});
    send_all(*this, link.fd, out, wait, deadline, gen);
    if (!cfg.password.empty()) reply();
    const resp::Reply id = reply();
    if (id.kind != ':') throw Failure(link.name + ": CLIENT ID did not answer an integer");
    std::vector<std::string> tracking = {
        "CLIENT", "TRACKING", "on", "REDIRECT", std::to_string(id.integer), "BCAST"};
    const bool everything =
        std::any_of(cfg.prefixes.begin(), cfg.prefixes.end(), [](auto& p) { return p.empty(); });
    if (!everything) {
        for (const auto& p : cfg.prefixes) {
            tracking.push_back("PREFIX");
            tracking.push_back(p);
        }
    }
    send_all(*this, link.fd, resp::command(tracking), wait, deadline, gen);
    if (!reply().is("OK")) throw Failure(link.name + ": CLIENT TRACKING was refused");
    send_all(*this, link.fd, resp::command({"SUBSCRIBE", kChannel}), wait, deadline, gen);
    const resp::Reply sub = reply();
    if (sub.kind != '*' || sub.elements.empty() || !sub.elements[0].is("subscribe")) {
        throw Failure(link.name + ": SUBSCRIBE was not confirmed");
    }
}

void Listener::connect_all(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen) {
    links.resize(cfg.endpoints.size());
    for (std::size_t i = 0; i < cfg.endpoints.size(); ++i) {
        connect_one(links[i], cfg.endpoints[i], cfg, gen);
    }
}

void Listener::serve(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen) {
    const std::string ping = resp::command({"PING"});
    double next_ping = steady() + cfg.ping_interval;
    std::vector<pollfd> fds(links.size() + 1);
    Released released;
    try {
        serve_loop(links, cfg, gen, released, fds, ping, next_ping);
    } catch (...) {
        coherence_.bury(released);
        throw;
    }
}

void Listener::serve_loop(std::vector<Link>& links, const ListenerConfig& cfg, std::uint64_t gen,
                          Released& released, std::vector<pollfd>& fds, const std::string& ping,
                          double next_ping) {
    auto wait = &Listener::wait_for;
    for (;;) {
        if (told_to_leave(gen)) return;
        for (std::size_t i = 0; i < links.size(); ++i) fds[i] = {links[i].fd, POLLIN, 0};
        fds[links.size()] = {wake_[0], POLLIN, 0};
        const double left = std::max(0.0, next_ping - steady());
        const int rc = ::poll(fds.data(), fds.size(), static_cast<int>(left * 1000) + 1);
        if (rc < 0 && errno != EINTR) throw Failure(std::string("poll: ") + std::strerror(errno));
        if (rc > 0 && (fds[links.size()].revents & POLLIN)) drain_wake();
        for (std::size_t i = 0; rc > 0 && i < links.size(); ++i) {
            if (!fds[i].revents) continue;
            Link& link = links[i];
            // pending(): set before the bytes leave the socket, cleared once applied (or
            // on the way out when this fails: the L1 is then reset anyway).
            struct Applying {
                std::atomic<int>& flag;
                ~Applying() { flag.store(0, std::memory_order_seq_cst); }
            } applying{applying_};
            applying_.store(1, std::memory_order_seq_cst);
            receive(link.fd, link.reader, link.name);
            resp::Reply r;
            std::lock_guard<std::mutex> lock(work_mu_);
            if (told_to_leave(gen)) return;
            while (link.reader.next(r)) {
                if (r.is_error()) throw Failure(link.name + " answered: " + r.text);
                const bool push = r.kind == '*' && !r.elements.empty();
                if (push && r.elements[0].is("message") && r.elements.size() == 3) {
                    messages_.fetch_add(1, std::memory_order_relaxed);
                    const resp::Reply& keys = r.elements[2];
                    const double t = now(cfg);
                    if (keys.null || keys.kind != '*') {  // FLUSHDB / FLUSHALL
                        flushes_.fetch_add(1, std::memory_order_relaxed);
                        coherence_.reset(true, released);
                    } else {
                        for (const resp::Reply& k : keys.elements) {
                            coherence_.invalidate(k.text, t, released);
                        }
                        keys_.fetch_add(keys.elements.size(), std::memory_order_relaxed);
                    }
                } else if (push && r.elements[0].is("pong")) {
                    link.ping_sent = -1;
                    pings_.fetch_add(1, std::memory_order_relaxed);
                } else if (!(push && r.elements[0].is("subscribe"))) {
                    throw Failure(link.name + " sent an unexpected reply");
                }
            }
            coherence_.bury(released);
        }
        const double t = steady();
        if (t >= next_ping) {
            for (Link& link : links) {
                if (link.ping_sent >= 0 && t - link.ping_sent > cfg.pong_deadline) {
                    throw Failure(link.name + " did not answer PING in time");
                }
                if (link.ping_sent < 0) {
                    link.ping_sent = t;
                    send_all(*this, link.fd, ping, wait, t + cfg.pong_deadline, gen);
                }
            }
            next_ping = t + cfg.ping_interval;
        }
    }
}

bool Listener::pending() const {
    // The sockets first, then the flag: bytes that arrived before this call are either
    // still in a socket, or were taken by a recv that the flag announced before it ran and
    // withdraws only once they are applied.
    {
        std::lock_guard<std::mutex> lock(cfg_mu_);  // open_fds_ are closed under it
        if (!open_fds_.empty()) {
            pollfd fds[8];
            const std::size_t n = std::min<std::size_t>(open_fds_.size(), 8);
            for (std::size_t i = 0; i < n; ++i) fds[i] = {open_fds_[i], POLLIN, 0};
            if (open_fds_.size() > n || ::poll(fds, n, 0) != 0) return true;
        }
    }
    return applying_.load(std::memory_order_seq_cst) != 0;
}

// --- fork ------------------------------------------------------------------------------------

void Listener::before_fork() noexcept {
    work_mu_.lock();
    cfg_mu_.lock();
}

void Listener::after_fork_parent() noexcept {
    cfg_mu_.unlock();
    work_mu_.unlock();
}

void Listener::after_fork_child() noexcept {
    // The thread does not exist here. Its sockets are the parent's: closed, not shut down.
    for (int fd : open_fds_) ::close(fd);
    open_fds_.clear();
    for (int& fd : wake_) {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    thread_ = pthread_t{};
    running_.store(false, std::memory_order_release);
    stop_.store(false, std::memory_order_release);
    state_.store(static_cast<int>(ListenerState::stopped), std::memory_order_release);
    connections_.store(0, std::memory_order_relaxed);
    starts_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    coherence_.disable_without_store();
    cfg_mu_.unlock();
    work_mu_.unlock();
}

}  // namespace fastcache
