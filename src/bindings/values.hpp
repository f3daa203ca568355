// Python values in and out of the core: the wire codec (Python object <-> bytes) and the
// L1's stored form (a private snapshot handed out without a decode on each hit).
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/codec.hpp"

namespace fastcache::bindings {

enum class PickleMode { Signed, Unsigned, Forbid };

enum class Serializer { Msgpack, Pickle, Json };

// The default bound on a value's body (after decompression): MAX_VALUE_BYTES.
inline constexpr std::size_t kDefaultMaxValueBytes = std::size_t(1) << 20;

// The default object budget of a value: MAX_VALUE_OBJECTS (see codec::kUnboundedObjects).
// The costliest objects (Decimals, empty sets) take ~100 ns each to build on a 2-core
// machine, so a hostile value costs at most ~6 ms and ~7 MiB; a list of 1,000 dicts of 10
// fields holds 21,001 (benchmarks/bench_bombs.py, docs/security.md).
inline constexpr std::uint64_t kDefaultMaxValueObjects = 65536;

struct CodecOptions {
    Serializer serializer = Serializer::Msgpack;  // SERIALIZER
    PickleMode pickle = PickleMode::Signed;
    std::string signing_key;                 // HMAC-SHA256 key that signs pickled bodies
    std::vector<std::string> fallback_keys;  // also accepted when verifying (key rotation)
    long long compress_min_bytes = -1;       // compress bodies at least this long; -1: never
    codec::Compressor compressor = codec::Compressor::Zlib;
    int compress_level = 6;
    int pickle_protocol = 5;
    std::size_t max_value_bytes = kDefaultMaxValueBytes;  // body bound, written and read
    // Objects a msgpack or JSON body may hold, written and read (pickles are not counted).
    std::uint64_t max_value_objects = kDefaultMaxValueObjects;
};

// Imports the Python modules and types the codec needs. Called once at module import.
void init_values();

// Python value -> wire bytes. Raises SerializationError (PICKLE="forbid"),
// ValueTooLargeError (a body over max_value_bytes, or a msgpack or JSON body of more than
// max_value_objects objects) or whatever pickle raises for an
// unpicklable value (pickle.PicklingError, as Django's backends do).
pybind11::bytes encode(pybind11::handle value, const CodecOptions& options);

// Wire bytes -> a new Python value. Raises DecodeError (or a subclass) on any malformed,
// foreign, unsigned or badly signed input, or one whose body (decompressed) is over
// max_value_bytes or holds more than max_value_objects objects (refused before they are
// built); never reads out of bounds, never allocates more than the input and the bounds
// allow (see codec::read_body).
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
    std::size_t charge;  // bytes it occupies (CPython's own sizes, containers included)
};

// Takes a private snapshot of `value` for the L1: later changes to `value` do not reach
// the cache. Types outside the codec's set are pickled (raising as pickle does), unless
// PICKLE="forbid" (SerializationError). Under SERIALIZER="json" the snapshot is what a JSON
// round trip gives back, so the L1 and Redis hand out the same value.
Snapshot snapshot(pybind11::handle value, const CodecOptions& options);

// A value for the caller from a stored snapshot (new reference).
pybind11::object materialize(pybind11::handle stored, std::uint32_t tag);

// The stored form of a plain int (for incr on the L1): shared, never copied.
std::size_t charge_of_int(pybind11::handle value);

}  // namespace fastcache::bindings
