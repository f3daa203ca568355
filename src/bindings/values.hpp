// Python values in and out of the core: the wire codec (Python object <-> bytes) and the
// L1's stored form (a private snapshot handed out without a decode on each hit).
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fastcache::bindings {

enum class PickleMode { Signed, Unsigned, Forbid };

struct CodecOptions {
    bool pickle_only = false;            // SERIALIZER="pickle"
    PickleMode pickle = PickleMode::Signed;
    std::string signing_key;             // HMAC-SHA256 key for pickled bodies
    long long compress_min_bytes = -1;   // compress bodies at least this long; -1: never
    int compress_level = 6;
    int pickle_protocol = 5;
    std::size_t max_value_bytes = std::size_t(512) << 20;  // decompression bound
};

// Imports the Python modules and types the codec needs. Called once at module import.
void init_values();

// Python value -> wire bytes. Raises SerializationError (PICKLE="forbid") or whatever
// pickle raises for an unpicklable value (pickle.PicklingError, as Django's backends do).
pybind11::bytes encode(pybind11::handle value, const CodecOptions& options);

// Wire bytes -> a new Python value. Raises DecodeError (or a subclass) on any malformed,
// foreign, unsigned or badly signed input; never reads out of bounds.
pybind11::object decode(std::string_view data, const CodecOptions& options);

// How the L1 holds a value, in Value::tag.
enum StoredTag : std::uint32_t {
    kShared = 0,   // immutable: every hit returns this very object
    kCopy = 1,     // JSON-like containers: each hit returns a fresh structural copy
    kPickled = 2,  // anything else: stored as pickle bytes, unpickled on each hit
};

struct Snapshot {
    pybind11::object object;  // what the L1 keeps
    StoredTag tag;
    std::size_t charge;       // approximate bytes it occupies
};

// Takes a private snapshot of `value` for the L1: later changes to `value` do not reach
// the cache. Types outside the codec's set are pickled (raising as pickle does), unless
// PICKLE="forbid" (SerializationError).
Snapshot snapshot(pybind11::handle value, const CodecOptions& options);

// A value for the caller from a stored snapshot (new reference).
pybind11::object materialize(pybind11::handle stored, std::uint32_t tag);

// The stored form of a plain int (for incr on the L1): shared, never copied.
std::size_t charge_of_int(pybind11::handle value);

}  // namespace fastcache::bindings
