// One registration function per area of the extension; module.cpp calls each once.
#pragma once

#include <pybind11/pybind11.h>

namespace fastcache::bindings {

void register_codec(pybind11::module_& m);    // register_codec.cpp: encode/decode
void register_cache(pybind11::module_& m);    // register_cache.cpp: keys + L1 engine
void register_log(pybind11::module_& m);      // register_log.cpp: JSON log writer
void register_limiter(pybind11::module_& m);  // register_limiter.cpp: rate limiter
void register_orm(pybind11::module_& m);      // register_orm.cpp: ORM cache hit rebuild

}  // namespace fastcache::bindings
