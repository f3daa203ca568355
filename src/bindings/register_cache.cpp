#include "bindings/registry.hpp"

namespace fastcache::bindings {

void register_cache(pybind11::module_& /*m*/) {}

}  // namespace fastcache::bindings
