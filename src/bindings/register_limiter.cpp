// Python bindings of the in-process rate limiter: a module-level registry of named
// limiter tables (one per process per name, like the L1 store registry) and their check.
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include <pybind11/stl.h>

#include "bindings/registry.hpp"
#include "core/limiter.hpp"

namespace py = pybind11;
using fastcache::limiter::Algorithm;
using fastcache::limiter::Limiter;
using fastcache::limiter::LimiterConfig;
using fastcache::limiter::Policy;

namespace fastcache::bindings {

namespace {

std::mutex registry_mu;
// Leaked on purpose: tables live for the process and must not be destroyed after the
// interpreter has gone (limiters hold no Python objects, so leaking is harmless).
auto& registry = *new std::map<std::string, std::shared_ptr<Limiter>, std::less<>>();

std::shared_ptr<Limiter> get_limiter(const std::string& name, std::size_t max_bytes,
                                     unsigned shards) {
    if (max_bytes < 1024) throw py::value_error("max_bytes must be at least 1024");
    if (shards < 1 || shards > 1024) throw py::value_error("shards must be between 1 and 1024");
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find(name);
    if (it != registry.end()) return it->second;
    auto limiter = std::make_shared<Limiter>(LimiterConfig{max_bytes, shards});
    registry.emplace(name, limiter);
    return limiter;
}

}  // namespace

void register_limiter(py::module_& m) {
    py::class_<Limiter, std::shared_ptr<Limiter>>(m, "Limiter")
        .def(py::init([](std::size_t max_bytes, unsigned shards) {
                 return std::make_shared<Limiter>(LimiterConfig{max_bytes, shards});
             }),
             py::arg("max_bytes") = std::size_t{64} << 20, py::arg("shards") = 16)
        .def(
            "hit",
            [](Limiter& self, std::string_view key, int algorithm, std::int64_t limit,
               std::int64_t period_us, std::int64_t burst, std::int64_t cost, std::int64_t now_us) {
                if (algorithm < 0 || algorithm > 3) throw py::value_error("unknown algorithm");
                Policy p{static_cast<Algorithm>(algorithm), limit, period_us, burst};
                auto d = self.hit(key, p, cost, now_us);
                return py::make_tuple(d.allowed, d.remaining, d.retry_after_us, d.reset_after_us,
                                      d.full);
            },
            py::arg("key"), py::arg("algorithm"), py::arg("limit"), py::arg("period_us"),
            py::arg("burst"), py::arg("cost"), py::arg("now_us"),
            "One atomic check; returns (allowed, remaining, retry_after_us, reset_after_us, full).")
        .def("reset", [](Limiter& self, std::string_view key) { return self.reset(key); })
        .def("clear", &Limiter::clear)
        .def_property_readonly("max_bytes", [](const Limiter& self) { return self.config().max_bytes; })
        .def_property_readonly("shards", [](const Limiter& self) { return self.config().shards; })
        .def("stats", [](const Limiter& self) {
            auto s = self.stats();
            py::dict d;
            d["checks"] = s.checks;
            d["allowed"] = s.allowed;
            d["denied"] = s.denied;
            d["evictions"] = s.evictions;
            d["rejected_full"] = s.rejected_full;
            d["keys"] = s.keys;
            d["bytes"] = s.bytes;
            return d;
        });

    m.def("get_limiter", &get_limiter, py::arg("name"), py::arg("max_bytes") = std::size_t{64} << 20,
          py::arg("shards") = 16,
          "The process-wide limiter table named `name`, created with this configuration on "
          "first use (later configurations of the same name are ignored).");
}

}  // namespace fastcache::bindings
