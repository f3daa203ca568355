// Builds CodecOptions from the keyword arguments the Python layer passes (already
// validated there against the cache's OPTIONS; this only rejects impossible values).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/values.hpp"

namespace fastcache::bindings {

inline CodecOptions codec_options(const std::string& serializer, const std::string& pickle,
                                  const pybind11::bytes& signing_key,
                                  const std::vector<pybind11::bytes>& fallback_keys,
                                  long long compress_min_bytes, const std::string& compressor,
                                  int compress_level, int pickle_protocol,
                                  long long max_value_bytes, long long max_value_objects) {
    CodecOptions o;
    if (serializer == "pickle") {
        o.serializer = Serializer::Pickle;
    } else if (serializer == "json") {
        o.serializer = Serializer::Json;
    } else if (serializer != "msgpack") {
        throw pybind11::value_error("serializer must be 'msgpack', 'pickle' or 'json', not '" +
                                    serializer + "'");
    }
    if (pickle == "signed") {
        o.pickle = PickleMode::Signed;
    } else if (pickle == "unsigned") {
        o.pickle = PickleMode::Unsigned;
    } else if (pickle == "forbid") {
        o.pickle = PickleMode::Forbid;
    } else {
        throw pybind11::value_error("pickle must be 'signed', 'unsigned' or 'forbid', not '" +
                                    pickle + "'");
    }
    if (o.serializer == Serializer::Pickle && o.pickle == PickleMode::Forbid) {
        throw pybind11::value_error("serializer 'pickle' cannot be used with pickle 'forbid'");
    }
    o.signing_key = signing_key;
    if (o.pickle == PickleMode::Signed && o.signing_key.empty()) {
        throw pybind11::value_error("pickle 'signed' needs a signing key");
    }
    for (const auto& k : fallback_keys) {
        std::string key = k;
        if (key.empty()) throw pybind11::value_error("fallback keys must not be empty");
        o.fallback_keys.push_back(std::move(key));
    }
    int lo = -1, hi = 9;
    if (compressor == "zlib" || compressor == "none") {
        o.compressor = codec::Compressor::Zlib;
        if (compressor == "none") compress_min_bytes = -1;
    } else if (compressor == "zstd") {
        o.compressor = codec::Compressor::Zstd;
        lo = -7, hi = 22;
    } else if (compressor == "lz4") {
        o.compressor = codec::Compressor::Lz4;
        lo = 0, hi = 16;
    } else {
        throw pybind11::value_error("compressor must be 'zlib', 'zstd', 'lz4' or 'none', not '" +
                                    compressor + "'");
    }
    if (compress_level < lo || compress_level > hi) {
        throw pybind11::value_error("compress_level for " + compressor + " must be between " +
                                    std::to_string(lo) + " and " + std::to_string(hi));
    }
    if (max_value_bytes <= 0) throw pybind11::value_error("max_value_bytes must be positive");
    if (max_value_objects < 0) {
        throw pybind11::value_error("max_value_objects must be positive, or 0 for no bound");
    }
    o.compress_min_bytes = compress_min_bytes;
    o.compress_level = compress_level;
    o.pickle_protocol = pickle_protocol;
    o.max_value_bytes = static_cast<std::size_t>(max_value_bytes);
    o.max_value_objects = max_value_objects == 0 ? codec::kUnboundedObjects
                                                 : static_cast<std::uint64_t>(max_value_objects);
    return o;
}

}  // namespace fastcache::bindings
